//! The scheduled poll: drives due refunds to a final state, page by page, within a time budget.

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{error, info};

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
                break;
            }
            let page = self.ledger.due(now, cursor, self.cfg.page_size).await?;
            report.pages += 1;
            for rec in page.items {
                if started.elapsed() >= budget {
                    break 'pages;
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
        // An idle poll (every minute on Lambda, every few seconds locally) is not news.
        if report.examined == 0 && report.errors == 0 {
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
            "poll finished"
        );
        Ok(report)
    }
}
