//! The `status` table: aligned columns as kubectl prints them, then notes explaining the
//! flags in it and what to do about them.

use jiff::{SignedDuration, Timestamp};

use super::row::Row;
use super::when;

/// Columns separated by three spaces, each as wide as its widest cell.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The credentials table, with a NAMESPACE column when they span namespaces.
pub fn render(
    rows: &[Row],
    now: Timestamp,
    all_namespaces: bool,
    warning: SignedDuration,
) -> String {
    let mut header = vec![
        "NAME",
        "READY",
        "REASON",
        "TOKEN EXPIRES",
        "RE-LOGIN BY",
        "LAST REFRESH",
        "FAILURES",
        "BASE URL",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.name.clone(),
                r.ready_status.clone(),
                r.reason.clone().unwrap_or_else(|| "-".into()),
                r.token_expires_cell(now),
                r.relogin_cell(),
                r.last_refresh_cell(now),
                r.failed_refresh_attempts.to_string(),
                r.base_url.clone().unwrap_or_else(|| "-".into()),
            ];
            if all_namespaces {
                cells.insert(0, r.namespace.clone());
            }
            cells
        })
        .collect();
    let mut out = columns(&header, &cells);
    out.push_str(&notes(rows, warning));
    out
}

/// What the table's marks mean, and the commands that fix what they flag.
fn notes(rows: &[Row], warning: SignedDuration) -> String {
    let mut out = String::new();
    let ready = rows.iter().filter(|r| r.ready).count();
    out.push_str(&format!("\n{ready} of {} Ready.\n", rows.len()));
    let due: Vec<&Row> = rows.iter().filter(|r| r.relogin_soon).collect();
    if !due.is_empty() {
        out.push_str(&format!(
            "! the refresh token dies within {} (or has died): a person must log in again:\n",
            when::span(warning)
        ));
        for r in due {
            out.push_str(&format!(
                "    kubectl eagleeye authorize {} -n {}\n",
                r.name, r.namespace
            ));
        }
    }
    if rows.iter().any(|r| r.refresh_token_deadline_is_estimate) {
        out.push_str(
            "~ estimated: the refresh-token Secret has no eagle-eye-operator.io/login-time \
             annotation, so the deadline counts from when the operator first saw the token.\n",
        );
    }
    let failing: Vec<&Row> = rows.iter().filter(|r| !r.ready).collect();
    if !failing.is_empty() {
        out.push_str("Not Ready; see why with:\n");
        for r in failing {
            out.push_str(&format!(
                "    kubectl eagleeye status {} -n {}\n",
                r.name, r.namespace
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_cli::row::tests::{cond, credential, t};

    const WEEK: SignedDuration = SignedDuration::from_hours(7 * 24);

    fn rows() -> Vec<Row> {
        let good = credential(
            "good",
            serde_json::json!({
                "conditions": [cond("Ready", "True", "TokenRefreshed")],
                "accessTokenExpiresAt": t(11 * 3600 + 30).to_string(),
                "refreshTokenDeadline": t(80 * 86_400 + 5).to_string(),
                "lastRefreshAt": t(-300).to_string(),
                "baseUrl": "https://api.c001.eagleeyenetworks.com",
            }),
        );
        let failing = credential(
            "failing",
            serde_json::json!({
                "conditions": [cond("Ready", "False", "RefreshFailed")],
                "accessTokenExpiresAt": t(-600).to_string(),
                "refreshTokenDeadline": t(3 * 86_400 + 5).to_string(),
                "refreshTokenDeadlineIsEstimate": true,
                "failedRefreshAttempts": 4,
            }),
        );
        [good, failing]
            .iter()
            .map(|cr| Row::new(cr, t(0), WEEK))
            .collect()
    }

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let out = columns(
            &["A", "LONG HEADER", "C"],
            &[vec!["wide cell".into(), "x".into(), "y".into()]],
        );
        assert_eq!(
            out,
            "A           LONG HEADER   C\nwide cell   x             y\n"
        );
    }

    #[test]
    fn the_table_shows_health_expiry_deadline_and_failures() {
        let out = render(&rows(), t(0), false, WEEK);
        let expected = "\
NAME      READY   REASON           TOKEN EXPIRES     RE-LOGIN BY          LAST REFRESH   FAILURES   BASE URL
good      True    TokenRefreshed   in 11h            2027-04-05 (80d)     5m ago         0          https://api.c001.eagleeyenetworks.com
failing   False   RefreshFailed    expired 10m ago   2027-01-18 (~3d) !   -              4          -

1 of 2 Ready.
! the refresh token dies within 7d (or has died): a person must log in again:
    kubectl eagleeye authorize failing -n video
~ estimated: the refresh-token Secret has no eagle-eye-operator.io/login-time annotation, \
so the deadline counts from when the operator first saw the token.
Not Ready; see why with:
    kubectl eagleeye status failing -n video
";
        assert_eq!(out, expected);
    }

    #[test]
    fn all_namespaces_adds_the_namespace_column() {
        let out = render(&rows(), t(0), true, WEEK);
        assert!(out.starts_with("NAMESPACE   NAME      READY"));
        assert!(out.lines().nth(1).unwrap().starts_with("video       good"));
    }
}
