//! kube-proxy's rule sets for the benchmark's services, as text for `iptables-restore` and
//! `nft -f`.
//!
//! iptables: the shape of docs/seeds/k8s-service-iptables-chains.txt (kube-proxy's iptables
//! mode): per service port, two KUBE-SERVICES rules (`! -s <pod cidr> ... -j KUBE-MARK-MASQ`,
//! then the jump to KUBE-SVC-*), a KUBE-SVC-* chain choosing an endpoint with
//! `-m statistic --mode random --probability 1/(n-i)`, one KUBE-SEP-* chain per endpoint
//! (KUBE-MARK-MASQ for the endpoint's own address, then DNAT), KUBE-NODEPORTS reached from the
//! last KUBE-SERVICES rule (`-m addrtype --dst-type LOCAL`), KUBE-POSTROUTING masquerading
//! marked packets, and kube-proxy's filter-table chains (KUBE-FORWARD, ...).
//!
//! nftables: kube-proxy's nftables mode (pkg/proxy/nftables): table `ip kube-proxy` with the
//! `service-ips` / `service-nodeports` verdict maps, one `service-*` chain per service port
//! choosing with `numgen random mod n vmap`, one `endpoint-*` chain per endpoint, and the
//! filter chains that check for services without endpoints.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// Transport protocol of a benchmark service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// One service port as kube-proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    /// Port name ("" for single-port services; kube-proxy then names it by number).
    pub port_name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    pub target_port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Svc {
    /// "ns/name:port" (kube-proxy's ServicePortName, used in comments and chain hashes;
    /// "ns/name" for an unnamed port).
    pub fn port_name_str(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// Node-wide facts the rules need.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    /// --cluster-cidr: the pod network (KUBE-MARK-MASQ for traffic from outside it).
    pub pod_cidr: &'static str,
    /// The service CIDR (nftables: drop traffic to unallocated ClusterIPs).
    pub service_cidr: &'static str,
    /// Node addresses that accept NodePort traffic (nftables `nodeport-ips`).
    pub node_ips: Vec<Ipv4Addr>,
}

/// kube-proxy hashes names with SHA-256 and base32; any stable 64-bit hash gives chain names
/// of the same length and the same distribution over the kernel's hash tables.
fn hash16(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Second round for 80 bits of name material.
    let mut h2: u64 = h ^ 0x9e37_79b9_7f4a_7c15;
    for b in text.bytes().rev() {
        h2 ^= b as u64;
        h2 = h2.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bits = ((h as u128) << 64) | h2 as u128;
    (0..16)
        .map(|i| ALPHA[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

pub fn svc_chain(s: &Svc) -> String {
    format!(
        "KUBE-SVC-{}",
        hash16(&format!("{}{}", s.port_name_str(), s.proto.name()))
    )
}

pub fn sep_chain(s: &Svc, ep: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{}{}{}:{}",
            s.port_name_str(),
            s.proto.name(),
            ep,
            s.target_port
        ))
    )
}

/// kube-proxy's computeProbability: "%0.10f" of 1/n.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

const FILTER_HEADER: &str = "*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
";

const FILTER_KUBE_FORWARD: &str = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
";

/// The jumps from the built-in chains (written once, at the first full load; kube-proxy
/// ensures them with `iptables -C/-I` outside iptables-restore).
const FILTER_JUMPS: &str = "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
";

const NAT_JUMPS: &str =
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
";

const NAT_FIXED: &str = "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
";

fn kube_services_rules(out: &mut String, svcs: &[Svc], facts: &NodeFacts) {
    for s in svcs {
        let p = s.proto.name();
        let c = format!("\"{} cluster IP\"", s.port_name_str());
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES ! -s {} -d {}/32 -p {p} -m comment --comment {c} -m {p} --dport {} -j KUBE-MARK-MASQ",
            facts.pod_cidr, s.vip, s.port
        );
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment {c} -m {p} --dport {} -j {}",
            s.vip,
            s.port,
            svc_chain(s)
        );
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for s in svcs {
        if let Some(np) = s.node_port {
            let p = s.proto.name();
            let c = format!("\"{}:\"", s.port_name_str());
            let _ = writeln!(out, "-A KUBE-NODEPORTS -p {p} -m comment --comment {c} -m {p} --dport {np} -j KUBE-MARK-MASQ");
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -p {p} -m comment --comment {c} -m {p} --dport {np} -j {}",
                svc_chain(s)
            );
        }
    }
}

fn service_chain_decls(out: &mut String, s: &Svc) {
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
    for ep in &s.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, *ep));
    }
}

fn service_chain_rules(out: &mut String, s: &Svc) {
    let svc = svc_chain(s);
    let n = s.endpoints.len();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, *ep);
        if i + 1 < n {
            let _ = writeln!(
                out,
                "-A {svc} -m statistic --mode random --probability {} -j {sep}",
                probability(n - i)
            );
        } else {
            let _ = writeln!(out, "-A {svc} -j {sep}");
        }
    }
    let p = s.proto.name();
    for ep in &s.endpoints {
        let sep = sep_chain(s, *ep);
        let _ = writeln!(out, "-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ");
        let _ = writeln!(
            out,
            "-A {sep} -p {p} -m {p} -j DNAT --to-destination {ep}:{}",
            s.target_port
        );
    }
}

/// The complete rule set, as kube-proxy's full sync writes it (plus the jumps from the
/// built-in chains), for `iptables-restore` (which replaces both tables).
pub fn iptables_full(svcs: &[Svc], facts: &NodeFacts) -> String {
    let mut out = String::with_capacity(svcs.len() * 3000 + 4096);
    out.push_str(FILTER_HEADER);
    out.push_str(FILTER_JUMPS);
    out.push_str(FILTER_KUBE_FORWARD);
    out.push_str("COMMIT\n*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n");
    for s in svcs {
        service_chain_decls(&mut out, s);
    }
    out.push_str(NAT_JUMPS);
    out.push_str(NAT_FIXED);
    kube_services_rules(&mut out, svcs, facts);
    for s in svcs {
        service_chain_rules(&mut out, s);
    }
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy's partial sync (MinimizeIPTablesRestore, default since 1.27) writes with
/// `iptables-restore --noflush` when one service's endpoints changed: the top-level chains in
/// full, the changed service's KUBE-SVC chain and new KUBE-SEP chains, and `-X` for the
/// KUBE-SEP chains that went away.
pub fn iptables_partial(svcs: &[Svc], facts: &NodeFacts, changed: &Svc, before: &Svc) -> String {
    let mut out = String::with_capacity(svcs.len() * 400 + 4096);
    out.push_str(FILTER_HEADER);
    out.push_str(FILTER_KUBE_FORWARD);
    out.push_str("COMMIT\n*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n");
    service_chain_decls(&mut out, changed);
    let stale: Vec<Ipv4Addr> = only_in(before, changed).collect();
    for ep in &stale {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(before, *ep));
    }
    out.push_str(NAT_FIXED);
    kube_services_rules(&mut out, svcs, facts);
    service_chain_rules(&mut out, changed);
    for ep in &stale {
        let _ = writeln!(out, "-X {}", sep_chain(before, *ep));
    }
    out.push_str("COMMIT\n");
    out
}

// ---------------------------------------------------------------------------------------------
// nftables
// ---------------------------------------------------------------------------------------------

fn hash8(text: &str) -> String {
    hash16(text)[..8].to_string()
}

/// "ns/name/proto/portname" as kube-proxy's nftables mode names chains.
fn nft_base(s: &Svc) -> String {
    format!(
        "{}/{}/{}/{}",
        s.namespace,
        s.name,
        s.proto.name(),
        s.port_name
    )
}

pub fn nft_service_chain(s: &Svc) -> String {
    format!("service-{}-{}", hash8(&nft_base(s)), nft_base(s))
}

pub fn nft_external_chain(s: &Svc) -> String {
    format!("external-{}-{}", hash8(&nft_base(s)), nft_base(s))
}

pub fn nft_endpoint_chain(s: &Svc, ep: Ipv4Addr) -> String {
    let base = format!("{}__{}/{}", nft_base(s), ep, s.target_port);
    format!("endpoint-{}-{}", hash8(&base), base)
}

fn nft_base_rules(facts: &NodeFacts) -> String {
    let mut out = String::new();
    out.push_str(
        "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"
",
    );
    let _ = writeln!(out, "add rule ip kube-proxy cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"", facts.service_cidr);
    out.push_str(
        "add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
",
    );
    for ip in &facts.node_ips {
        let _ = writeln!(out, "add element ip kube-proxy nodeport-ips {{ {ip} }}");
    }
    out
}

fn nft_service_rules(out: &mut String, s: &Svc, facts: &NodeFacts) {
    let svc = nft_service_chain(s);
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} ip daddr {} ip saddr != {} jump mark-for-masquerade",
        s.vip, facts.pod_cidr
    );
    let arms: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(s, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        arms.join(" , ")
    );
}

fn nft_endpoint_rules(out: &mut String, s: &Svc, ep: Ipv4Addr) {
    let c = nft_endpoint_chain(s, ep);
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {c} ip saddr {ep} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {c} meta l4proto {} dnat to {ep}:{}",
        s.proto.name(),
        s.target_port
    );
}

/// The complete table as kube-proxy's nftables mode writes it on a full sync: every chain
/// declared first (verdict maps may only name existing chains), then rules and elements.
pub fn nft_full(svcs: &[Svc], facts: &NodeFacts) -> String {
    let mut out = nft_base_rules(facts);
    for s in svcs {
        let _ = writeln!(out, "add chain ip kube-proxy {}", nft_service_chain(s));
        if s.node_port.is_some() {
            let _ = writeln!(out, "add chain ip kube-proxy {}", nft_external_chain(s));
        }
        for ep in &s.endpoints {
            let _ = writeln!(
                out,
                "add chain ip kube-proxy {}",
                nft_endpoint_chain(s, *ep)
            );
        }
    }
    for s in svcs {
        let svc = nft_service_chain(s);
        nft_service_rules(&mut out, s, facts);
        if s.node_port.is_some() {
            let ext = nft_external_chain(s);
            let _ = writeln!(out, "add rule ip kube-proxy {ext} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule ip kube-proxy {ext} goto {svc}");
        }
        for ep in &s.endpoints {
            nft_endpoint_rules(&mut out, s, *ep);
        }
        let p = s.proto.name();
        let _ = writeln!(out, "add element ip kube-proxy cluster-ips {{ {} }}", s.vip);
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} . {p} . {} : goto {svc} }}",
            s.vip, s.port
        );
        if let Some(np) = s.node_port {
            let _ = writeln!(
                out,
                "add element ip kube-proxy service-nodeports {{ {p} . {np} : goto {} }}",
                nft_external_chain(s)
            );
        }
    }
    out
}

/// One service's endpoints changed: the transaction kube-proxy's nftables mode sends (new
/// endpoint chains, the service chain flushed and rewritten, the old endpoint chains deleted).
pub fn nft_change(changed: &Svc, before: &Svc, facts: &NodeFacts) -> String {
    let mut out = String::new();
    for ep in only_in(changed, before) {
        let _ = writeln!(
            out,
            "add chain ip kube-proxy {}",
            nft_endpoint_chain(changed, ep)
        );
        nft_endpoint_rules(&mut out, changed, ep);
    }
    let _ = writeln!(
        out,
        "flush chain ip kube-proxy {}",
        nft_service_chain(changed)
    );
    nft_service_rules(&mut out, changed, facts);
    for ep in only_in(before, changed) {
        let _ = writeln!(
            out,
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(before, ep)
        );
    }
    out
}

/// The endpoints of `a` that `b` does not list, in `a`'s order.
fn only_in<'a>(a: &'a Svc, b: &'a Svc) -> impl Iterator<Item = Ipv4Addr> + 'a {
    a.endpoints
        .iter()
        .filter(|ep| !b.endpoints.contains(ep))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Svc {
        Svc {
            namespace: "test001".into(),
            name: "app-svc-clusterip".into(),
            port_name: String::new(),
            vip: Ipv4Addr::new(10, 109, 117, 159),
            port: 80,
            proto: Proto::Tcp,
            target_port: 8080,
            node_port: None,
            endpoints: vec![
                Ipv4Addr::new(10, 244, 2, 15),
                Ipv4Addr::new(10, 244, 1, 19),
                Ipv4Addr::new(10, 244, 2, 16),
            ],
        }
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            pod_cidr: "10.244.0.0/16",
            service_cidr: "10.96.0.0/12",
            node_ips: vec![Ipv4Addr::new(198, 18, 0, 11)],
        }
    }

    #[test]
    fn iptables_matches_the_seed_shape() {
        let s = svc();
        let text = iptables_full(std::slice::from_ref(&s), &facts());
        // The seed's 15 rules for a 3-endpoint ClusterIP service (2 + 3 + 3*2 + ... ).
        let svc = svc_chain(&s);
        assert!(text.contains(&"-A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.109.117.159/32 -p tcp -m comment --comment \"test001/app-svc-clusterip cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ".to_string()));
        assert!(text.contains(&format!(
            "-A {svc} -m statistic --mode random --probability 0.3333333333 -j"
        )));
        assert!(text.contains(&format!(
            "-A {svc} -m statistic --mode random --probability 0.5000000000 -j"
        )));
        assert!(text.contains("-p tcp -m tcp -j DNAT --to-destination 10.244.2.15:8080"));
        let per_service = text
            .lines()
            .filter(|l| l.contains(&svc) || l.contains("KUBE-SEP-"))
            .filter(|l| l.starts_with("-A"))
            .count();
        // 1 jump + 3 statistic/fallthrough + 3*2 SEP rules (+ the MARK-MASQ line has no chain name).
        assert_eq!(per_service, 10);
    }

    #[test]
    fn nft_has_the_vmap_shape() {
        let s = svc();
        let text = nft_full(std::slice::from_ref(&s), &facts());
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains(&format!(
            "add element ip kube-proxy service-ips {{ 10.109.117.159 . tcp . 80 : goto {} }}",
            nft_service_chain(&s)
        )));
    }
}
