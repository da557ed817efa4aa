//! A token bucket kept in a per-CPU map value (one per CPU, so it needs no lock): the REJECT
//! limit (`REJECT_TOKENS_V1`) and the monitor's event limit (`MONITOR_TOKENS_V1`) use it.

/// Tokens and the time they were last credited. Layout: two native-endian u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left, at most the bucket's burst.
    pub tokens: u64,
    /// `bpf_ktime_get_ns` up to which tokens were credited.
    pub last_ns: u64,
}

impl TokenBucket {
    /// Credits one token per `ns_per_token` since `last_ns` (up to `burst`) and takes one if
    /// there is one.
    #[inline(always)]
    pub fn take(&mut self, now: u64, ns_per_token: u64, burst: u64) -> bool {
        let earned = now.saturating_sub(self.last_ns) / ns_per_token;
        if earned > 0 {
            self.tokens = if earned >= burst {
                burst
            } else {
                let t = self.tokens + earned;
                if t > burst {
                    burst
                } else {
                    t
                }
            };
            self.last_ns = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

user_pod!(TokenBucket);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let mut b = TokenBucket {
            tokens: 2,
            last_ns: 0,
        };
        assert!(b.take(0, 10, 3) && b.take(0, 10, 3));
        assert!(!b.take(5, 10, 3), "no token earned yet");
        assert!(b.take(10, 10, 3), "one earned");
        assert!(b.take(1_000, 10, 3) && b.take(1_000, 10, 3) && b.take(1_000, 10, 3));
        assert!(!b.take(1_000, 10, 3), "capped at the burst");
    }
}
