//! The scheduled poll: drives due refunds to a final state, page by page, within a time budget.

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{error, info, warn};

use super::{RefundService, ServiceError};
use crate::decide::Trigger;
use crate::state::UnixMillis;

/// What one poll invocation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PollReport {
    pub examined: u32,
    pub settled: u32,
    pub retried: u32,
    pub still_pending: u32,
    pub needs_person: u32,
    pub errors: u32,
    pub pages: u32,
    /// Due refunds the poll saw but left unexamined when its budget ran out: the rest of the page
    /// it was on, or the next page (read once to tell). A lower bound when `left_due_more`.
    pub left_due: u32,
    /// More due refunds may follow the `left_due` ones (the pages had not ended).
    pub left_due_more: bool,
    /// How late the most overdue refund left unexamined was, when the poll ended.
    pub oldest_due_age_secs: Option<u64>,
    /// Events their writers had not published, published now.
    pub events_published: u32,
    /// Events the publisher refused again: they wait for the next poll.
    pub events_pending: u32,
}

impl PollReport {
    /// Notes what was left when the budget ran out: `left` are due refunds not examined (the
    /// most overdue first, as `due` serves them), `more` whether pages followed them.
    fn left(&mut self, left: &[crate::state::RefundRecord], more: bool) {
        let now = UnixMillis::now();
        self.left_due = u32::try_from(left.len()).unwrap_or(u32::MAX);
        self.left_due_more = more;
        self.oldest_due_age_secs = left
            .iter()
            .filter_map(|r| r.next_check_at)
            .min()
            .map(|at| at.age_at(now).as_secs());
    }
}

impl RefundService {
    /// Drives due refunds to a final state, page by page, until `budget` is spent.
    pub async fn poll(&self, budget: Duration) -> Result<PollReport, ServiceError> {
        let started = Instant::now();
        let mut report = PollReport::default();
        let mut cursor = None;
        let now = UnixMillis::now();
        'pages: loop {
            if started.elapsed() >= budget {
                // Spent between pages: one more page read says whether (and how late) work is left.
                if let Some(c) = cursor.take() {
                    match self.ledger.due(now, Some(c), self.cfg.page_size).await {
                        Ok(page) => report.left(&page.items, page.next.is_some()),
                        Err(e) => warn!(error = %e, "poll: could not read what is left due"),
                    }
                }
                break;
            }
            let page = self.ledger.due(now, cursor, self.cfg.page_size).await?;
            report.pages += 1;
            for (i, rec) in page.items.iter().cloned().enumerate() {
                if started.elapsed() >= budget {
                    report.left(&page.items[i..], page.next.is_some());
                    break 'pages;
                }
                if !rec.outbox.is_empty() {
                    let d = self.deliver(&rec).await;
                    report.events_published += d.published;
                    report.events_pending += d.failed;
                }
                // In the index only for its events (final, or its next check still to come).
                if !rec.is_due(now) {
                    continue;
                }
                report.examined += 1;
                let attempts_before = rec.attempts;
                let no = rec.out_refund_no.clone();
                match self.look_again(rec, Trigger::Poll).await {
                    Ok(after) => {
                        if after.attempts > attempts_before {
                            report.retried += 1;
                        }
                        if after.status.is_final() {
                            report.settled += 1;
                            if after.needs_person() {
                                report.needs_person += 1;
                            }
                        } else {
                            report.still_pending += 1;
                        }
                    }
                    Err(ServiceError::InProgress(_)) => report.still_pending += 1,
                    Err(e) => {
                        report.errors += 1;
                        error!(out_refund_no = %no, error = %e, "poll: refund could not be driven");
                    }
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if report.left_due > 0 {
            let left = if report.left_due_more {
                format!("at least {}", report.left_due)
            } else {
                report.left_due.to_string()
            };
            warn!(
                left_due = %left,
                oldest_due_age_secs = report.oldest_due_age_secs,
                examined = report.examined,
                budget_secs = budget.as_secs(),
                "poll budget spent with due refunds left"
            );
        }
        {
            use crate::telemetry::*;
            metrics::gauge!(POLL_EXAMINED).set(f64::from(report.examined));
            metrics::gauge!(POLL_SETTLED).set(f64::from(report.settled));
            metrics::gauge!(POLL_ERRORS).set(f64::from(report.errors));
            metrics::gauge!(POLL_LEFT_DUE).set(f64::from(report.left_due));
            metrics::gauge!(POLL_OLDEST_DUE_AGE_SECONDS)
                .set(report.oldest_due_age_secs.map_or(0.0, |s| s as f64));
        }
        // An idle poll (every minute on Lambda, every few seconds locally) is not news.
        if report.examined == 0
            && report.errors == 0
            && report.events_published == 0
            && report.events_pending == 0
        {
            tracing::debug!(pages = report.pages, "poll finished: nothing due");
            return Ok(report);
        }
        info!(
            examined = report.examined,
            settled = report.settled,
            retried = report.retried,
            still_pending = report.still_pending,
            needs_person = report.needs_person,
            errors = report.errors,
            pages = report.pages,
            events_published = report.events_published,
            events_pending = report.events_pending,
            "poll finished"
        );
        Ok(report)
    }
}
