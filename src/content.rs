//! What the refresh-token Secret holds, compared with what this process knows: the one
//! classifier behind the write-back, the store of a held token and the undoing of a revert.
//! Pure: fingerprints in, a verdict out. Values are normalised before they are fingerprinted
//! (see `secrets::normalize`), so a trailing newline never makes our own token look foreign.

/// A rotated refresh token this process received and has not yet seen stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending<'a> {
    /// The token that was spent to get it.
    pub spent: &'a str,
    /// The token the server returned (equal to `spent` when it did not rotate).
    pub new: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// The stored token is the live one and nothing waits to be stored.
    Current,
    /// The Secret still holds the token spent for a pending answer: store the new one.
    AwaitingWriteBack,
    /// The pending answer's token is stored (by this process, or an earlier attempt).
    StoredByUs,
    /// A token this operator rotated out was put back (a sync tool, a restored backup):
    /// never spend it; store the pending or live token over it.
    SpentPutBack,
    /// A token that is neither ours nor known dead: a person's new login. Theirs wins over
    /// anything pending.
    NewLogin,
}

/// `stored`: fingerprint of the token in the Secret; `pending`: an answer not yet seen
/// stored; `dead`: every fingerprint known rotated out (the Secret's list, the target's
/// copy, the pending answer's).
pub fn classify(stored: &str, pending: Option<Pending<'_>>, dead: &[String]) -> Content {
    let is_dead = |fp: &str| dead.iter().any(|d| d == fp);
    match pending {
        Some(p) if stored == p.new => Content::StoredByUs,
        Some(p) if stored == p.spent => Content::AwaitingWriteBack,
        Some(_) if is_dead(stored) => Content::SpentPutBack,
        Some(_) => Content::NewLogin,
        None if is_dead(stored) => Content::SpentPutBack,
        None => Content::Current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    const P: Pending<'static> = Pending {
        spent: "t1",
        new: "t2",
    };

    #[test]
    fn every_content_is_told_apart() {
        let d = dead(&["t0", "t1"]);
        assert_eq!(classify("t2", Some(P), &d), Content::StoredByUs);
        assert_eq!(classify("t1", Some(P), &d), Content::AwaitingWriteBack);
        assert_eq!(classify("t0", Some(P), &d), Content::SpentPutBack);
        assert_eq!(classify("t9", Some(P), &d), Content::NewLogin);
        assert_eq!(classify("t0", None, &d), Content::SpentPutBack);
        assert_eq!(classify("t2", None, &d), Content::Current);
    }

    #[test]
    fn the_token_spent_for_a_pending_answer_awaits_write_back_even_when_listed_dead() {
        // The write-back adds the spent token to the list in the same write that stores the
        // new one, so a list naming it beside the old token means the write did not happen.
        assert_eq!(
            classify("t1", Some(P), &dead(&["t1"])),
            Content::AwaitingWriteBack
        );
    }

    #[test]
    fn a_non_rotating_answer_is_stored_by_definition() {
        let same = Pending {
            spent: "t1",
            new: "t1",
        };
        assert_eq!(classify("t1", Some(same), &[]), Content::StoredByUs);
    }
}
