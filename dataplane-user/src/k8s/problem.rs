//! Problems found in Kubernetes objects, and logging each one once.
//!
//! Translation is pure and runs on every sync, so it returns its problems instead of logging
//! them; the sources pass them through a [`ProblemLog`], which logs a problem when it first
//! appears and stays quiet while it persists.

use std::{collections::HashSet, fmt};

use super::parse::Family;

/// How serious a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The object is invalid (bad IP, port out of range, unknown protocol, missing field...):
    /// it was skipped as a whole, everything else still applies.
    Invalid,
    /// Valid Kubernetes that this datapath does not serve yet (IPv6, SCTP): only that part
    /// was skipped.
    Unsupported,
}

/// One thing wrong with (or not supported in) one Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// The object's kind: "Service", "EndpointSlice" or "Node".
    pub kind: &'static str,
    /// "namespace/name" (just "name" for Nodes).
    pub object: String,
    /// The offending field as a path into the object, e.g. "spec.ports[1].port".
    pub field: String,
    /// What is wrong and what was skipped.
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.severity {
            Severity::Invalid => "invalid",
            Severity::Unsupported => "unsupported",
        };
        write!(
            f,
            "{what} {} {}: {}: {}",
            self.kind, self.object, self.field, self.message
        )
    }
}

/// Who a problem is about; builds [`Problem`]s for one object.
#[derive(Clone, Debug)]
pub(crate) struct Subject {
    pub kind: &'static str,
    pub object: String,
}

impl Subject {
    pub fn new(kind: &'static str, object: impl Into<String>) -> Self {
        Subject {
            kind,
            object: object.into(),
        }
    }

    /// The object is invalid because of `field`; the caller skips the whole object.
    pub fn invalid(&self, field: impl Into<String>, message: impl fmt::Display) -> Problem {
        self.problem(
            Severity::Invalid,
            field,
            format!("{message}; object skipped"),
        )
    }

    /// `field` holds something valid but unsupported; the caller skips only that part.
    pub fn unsupported(&self, field: impl Into<String>, message: impl Into<String>) -> Problem {
        self.problem(Severity::Unsupported, field, message)
    }

    fn problem(
        &self,
        severity: Severity,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            kind: self.kind,
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
            severity,
        }
    }
}

/// Logs each problem once: when it first shows up in a sync, not again while later syncs still
/// report it (so an invalid object does not fill the log once per sync), and again if it goes
/// away and comes back.
#[derive(Debug, Default)]
pub struct ProblemLog {
    current: HashSet<Problem>,
}

impl ProblemLog {
    /// Logs the problems that were not in the previous call's set; returns how many that was.
    pub fn report(&mut self, problems: &[Problem]) -> usize {
        let mut fresh = 0;
        for problem in problems.iter().filter(|p| !self.current.contains(*p)) {
            fresh += 1;
            match problem.severity {
                Severity::Invalid => log::warn!("{problem}"),
                Severity::Unsupported => log::info!("{problem}"),
            }
        }
        self.current = problems.iter().cloned().collect();
        fresh
    }
}

/// Translates each of `objects` once, in order: a second object of the same name is a
/// problem (the first one is used), an invalid one is its problem; what the others yield is
/// kept, their notes (unsupported parts) added to `problems`.
pub(super) fn translate_each<O, I: IntoIterator>(
    objects: &[O],
    subject_of: impl Fn(&O) -> Subject,
    mut translate: impl FnMut(&O, &Subject) -> Result<(I, Vec<Problem>), Problem>,
    problems: &mut Vec<Problem>,
) -> Vec<I::Item> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for object in objects {
        let subject = subject_of(object);
        if !seen.insert(subject.object.clone()) {
            let duplicate = format!("duplicate {}, the first one is used", subject.kind);
            problems.push(subject.invalid("metadata.name", duplicate));
            continue;
        }
        match translate(object, &subject) {
            Ok((items, notes)) => {
                out.extend(items);
                problems.extend(notes);
            }
            Err(problem) => problems.push(problem),
        }
    }
    out
}

/// Parses each `(field, text)` with `parse`: IPv4 values kept, IPv6 ones skipped (the field
/// noted in `ipv6`), anything else invalidates the object.
pub(super) fn ipv4_only<T>(
    fields: Vec<(String, &str)>,
    parse: impl Fn(&str) -> Result<Family<T>, String>,
    subject: &Subject,
    ipv6: &mut Vec<String>,
) -> Result<Vec<T>, Problem> {
    let mut out = Vec::new();
    for (field, text) in fields {
        match parse(text) {
            Ok(Family::V4(v)) => out.push(v),
            Ok(Family::V6) => ipv6.push(field),
            Err(message) => return Err(subject.invalid(field, message)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_object_and_field() {
        let p = Subject::new("Service", "ns/web")
            .invalid("spec.ports[1].port", "70000 is out of range");
        assert_eq!(
            p.to_string(),
            "invalid Service ns/web: spec.ports[1].port: 70000 is out of range; object skipped"
        );
    }

    #[test]
    fn problem_log_reports_only_new_problems() {
        let a = Subject::new("Node", "n1").invalid("spec.podCIDR", "bad");
        let b = Subject::new("Node", "n2").unsupported("spec.podCIDRs[1]", "IPv6");
        let mut log = ProblemLog::default();
        assert_eq!(log.report(std::slice::from_ref(&a)), 1);
        assert_eq!(log.report(&[a.clone(), b.clone()]), 1);
        assert_eq!(log.report(&[a.clone(), b.clone()]), 0);
        assert_eq!(log.report(std::slice::from_ref(&b)), 0);
        // `a` went away and came back: worth a new line.
        assert_eq!(log.report(&[a, b]), 1);
    }
}
