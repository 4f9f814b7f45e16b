//! Settling and notifying: the loop that moves due PROCESSING refunds to their final status, and
//! the notification pushes that follow (started after the settled state is saved), including the
//! ones a restart resumes.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::books::{AdminError, BookedStatus, RefundView, State, refund_view};
use crate::notify;

/// A notification push about to start.
struct Pending {
    out_refund_no: String,
    url: String,
    body: String,
    round: u32,
    attempts_done: u32,
    first_wait: Duration,
}

/// Settles due refunds and starts their notification pushes (after the settled state is saved,
/// so a notification never announces what a restart would undo).
pub fn settle(app: &Arc<App>, force: bool) -> Vec<String> {
    let (settled, pushes) = app.books.update(|st| {
        let settled = st.settle(
            tokio::time::Instant::now(),
            time::OffsetDateTime::now_utc(),
            force,
        );
        let pushes: Vec<_> = settled
            .iter()
            .filter_map(|no| prepare_push(app, st, no))
            .collect();
        (settled, pushes)
    });
    for p in pushes {
        spawn_push(app, p);
    }
    settled
}

/// `POST /sandbox/refunds/{out_refund_no}/resolve`: a CHANGE refund resolved in the merchant
/// platform becomes SUCCESS, and WeChat notifies the new final status like the first one (same
/// URL rules, a fresh retry schedule; a push of the CHANGE notification still retrying stops).
pub fn resolve(app: &Arc<App>, out_refund_no: &str) -> Result<RefundView, AdminError> {
    let (push, view) = app.books.update(|st| {
        st.resolve(out_refund_no, time::OffsetDateTime::now_utc())?;
        let push = prepare_push(app, st, out_refund_no);
        let view = st
            .refunds
            .get(out_refund_no)
            .map(|r| refund_view(st, r))
            .ok_or_else(|| AdminError::NotFound(format!("no refund {out_refund_no}")))?;
        Ok((push, view))
    })?;
    if let Some(p) = push {
        spawn_push(app, p);
    }
    Ok(view)
}

/// Builds a refund's final-status notification and records where it goes; None when it goes
/// nowhere.
fn prepare_push(app: &App, st: &mut State, no: &str) -> Option<Pending> {
    let (url, fields) = st.notification(no, app.default_notify_url.as_deref())?;
    let round = st.refunds.get(no)?.notify.round;
    match (url, build_notification(app, &fields)) {
        (Some(url), Ok(body)) => {
            st.set_notify_target(no, Some(url.clone()), None);
            Some(Pending {
                out_refund_no: no.to_string(),
                url,
                body,
                round,
                attempts_done: 0,
                first_wait: Duration::ZERO,
            })
        }
        (None, _) => {
            st.set_notify_target(no, None, Some("no notify_url".into()));
            None
        }
        (Some(url), Err(e)) => {
            st.set_notify_target(no, Some(url), Some(e));
            None
        }
    }
}

fn spawn_push(app: &App, p: Pending) {
    tokio::spawn(notify::deliver(notify::Push {
        books: app.books.clone(),
        client: app.notify_client.clone(),
        out_refund_no: p.out_refund_no,
        url: p.url,
        body: p.body,
        retry_factor: app.notify_retry_factor,
        shutdown: app.shutdown.clone(),
        attempts_done: p.attempts_done,
        first_wait: p.first_wait,
        round: p.round,
    }));
}

/// After a restart: restarts the pushes of loaded refunds that were settled but neither delivered
/// nor given up, to the URL they were addressed to, continuing their retry schedule where it stood
/// (an attempt that was due while the sandbox was down goes out now; a negative wait means due).
/// The body is rebuilt, with a fresh nonce, as a retry would be.
pub fn resume_pushes(app: &Arc<App>) -> usize {
    let wall = time::OffsetDateTime::now_utc();
    let mut pending: Vec<Pending> = {
        let st = app.books.read();
        st.refunds
            .values()
            .filter(|r| r.status != BookedStatus::Processing && r.notify.pending())
            .filter_map(|r| {
                // The URL it was addressed to, not one derived from today's flags: WeChat keeps
                // retrying where it first sent it.
                let url = r.notify.url.clone()?;
                let (_, fields) = st.notification(&r.out_refund_no, None)?;
                let body = match build_notification(app, &fields) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(out_refund_no = %r.out_refund_no, error = %e,
                            "a pending notification cannot be rebuilt and is not resumed");
                        return None;
                    }
                };
                let first_wait = r
                    .notify
                    .next_attempt_at
                    .and_then(|t| Duration::try_from(t - wall).ok())
                    .unwrap_or(Duration::ZERO);
                Some(Pending {
                    out_refund_no: r.out_refund_no.clone(),
                    url,
                    body,
                    round: r.notify.round,
                    attempts_done: r.notify.attempts,
                    first_wait,
                })
            })
            .collect()
    };
    pending.sort_by(|a, b| a.out_refund_no.cmp(&b.out_refund_no));
    let resumed = pending.len();
    for p in pending {
        spawn_push(app, p);
    }
    resumed
}

fn build_notification(app: &App, fields: &[(String, String)]) -> Result<String, String> {
    let req_info = notify::encrypt_req_info(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &app.key,
    )
    .map_err(|e| e.to_string())?;
    let nonce = wxpay::NonceStr::random();
    wxpay::xml::encode([
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", app.merchant.appid.as_str()),
        ("mch_id", app.merchant.mch_id.as_str()),
        ("nonce_str", nonce.as_str()),
        ("req_info", req_info.as_str()),
    ])
    .map_err(|e| e.to_string())
}

/// Ticks the settle loop until shutdown.
pub async fn settle_loop(app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let tick = (app.settle_after / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => { settle(&app, false); }
            _ = shutdown.changed() => return,
        }
    }
}
