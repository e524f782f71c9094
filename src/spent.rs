//! Which refresh tokens are dead: each one this operator rotated out, remembered by
//! fingerprint, newest first, in an annotation written together with the token that
//! replaced it (and copied to the target Secret). A dead token that comes back into its
//! Secret — put there by a GitOps or secret-sync tool, or a restored backup — is recognised
//! and never spent: spending it fails, and the server counts it as token reuse.

use std::collections::BTreeMap;

/// On the refresh-token Secret and, as a copy, on the target Secret.
pub const ANNOTATION: &str = "eagle-eye-operator.io/spent-refresh-token-fingerprints";

/// How many fingerprints are kept (about 1 KiB). A tool that keeps reverting the Secret
/// brings the same token back each time, which keeps it at the front; the bound matters
/// only for a backup restored after this many rotations (16 hours with 15-minute access
/// tokens, a month with 12-hour ones).
pub const MAX: usize = 64;

/// The list as written, or as much of it as could be ours: only fingerprints (16 hex
/// digits), at most [`MAX`]. Whoever may edit the Secret's annotations cannot make the
/// operator hold or compare more than that.
pub fn read(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    let Some(v) = annotations.and_then(|a| a.get(ANNOTATION)) else {
        return Vec::new();
    };
    let fingerprints = v
        .split(',')
        .map(str::trim)
        .filter(|f| f.len() == 16 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    union(&fingerprints, &[])
}

pub fn render(list: &[String]) -> String {
    list.join(",")
}

/// The list once `spent` has been traded for `current`.
pub fn after(previous: &[String], spent: &str, current: &str) -> Vec<String> {
    union(&[spent.to_owned()], previous)
        .into_iter()
        .filter(|f| f != current)
        .collect()
}

/// Every token known dead, from the lists that may name one (the refresh-token Secret's,
/// the target's copy, a held answer's), in that order of trust, at most `MAX` long.
pub fn known_dead(lists: &[&[String]]) -> Vec<String> {
    lists
        .iter()
        .fold(Vec::new(), |dead, list| union(&dead, list))
}

/// `first`, then what `second` adds, without repeats and at most `MAX` long.
pub fn union(first: &[String], second: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in first.iter().chain(second) {
        if out.len() < MAX && !out.contains(f) {
            out.push(f.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fps(n: std::ops::Range<usize>) -> Vec<String> {
        n.map(|i| format!("fp{i}")).collect()
    }

    #[test]
    fn the_list_is_newest_first_without_repeats_or_the_live_token_and_bounded() {
        let mut list: Vec<String> = Vec::new();
        for n in 0..100 {
            list = after(&list, &format!("fp{n}"), &format!("fp{}", n + 1));
        }
        assert_eq!(list.len(), MAX);
        assert_eq!(list[0], "fp99");
        assert_eq!(list[MAX - 1], format!("fp{}", 100 - MAX));
        // A reverted token written over again moves to the front; the live one is never listed.
        let again = after(&list, "fp50", "fp100");
        assert_eq!(again[0], "fp50");
        assert_eq!(again.iter().filter(|f| *f == "fp50").count(), 1);
        assert!(!after(&list, "fp99", "fp98").contains(&"fp98".to_owned()));
    }

    /// Real fingerprints: 16 hex digits.
    fn hex(n: std::ops::Range<usize>) -> Vec<String> {
        n.map(|i| format!("{i:016x}")).collect()
    }

    #[test]
    fn the_annotation_round_trips_and_tolerates_blanks() {
        let list = hex(0..3);
        let mut a = BTreeMap::new();
        a.insert(ANNOTATION.to_owned(), render(&list));
        assert_eq!(read(Some(&a)), list);
        a.insert(
            ANNOTATION.to_owned(),
            format!(" {}, ,{},", list[0], list[1]),
        );
        assert_eq!(read(Some(&a)), hex(0..2));
        assert!(read(None).is_empty());
    }

    #[test]
    fn a_hand_made_list_yields_only_fingerprints_and_at_most_max_of_them() {
        let mut a = BTreeMap::new();
        let mut value = "not-a-fingerprint,0123,zzzzzzzzzzzzzzzz,".repeat(1000);
        value.push_str(&render(&hex(0..10_000)));
        a.insert(ANNOTATION.to_owned(), value);
        assert_eq!(read(Some(&a)), hex(0..MAX));
    }

    #[test]
    fn union_keeps_the_first_lists_order_and_the_bound() {
        assert_eq!(union(&fps(0..2), &fps(1..4)), fps(0..4));
        assert_eq!(union(&fps(0..MAX), &fps(MAX..MAX + 5)).len(), MAX);
    }
}
