//! The refund workflows, independent of Lambda and HTTP: submit, get (optionally refreshed from
//! WeChat), list an order's refunds, poll due refunds, and apply a refund notification. The ledger is
//! written before WeChat is called, every write is fenced, and every retry reuses the out_refund_no.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tracing::{error, info, warn};
use wxpay::notify::{self, RefundNotification};
use wxpay::query::{QuerySelector, RefundQueryRequest, RefundRecord as WxRefundRecord};
use wxpay::refund::{RefundAccount, RefundRequest};
use wxpay::{CallOutcome, ErrCode, Fen, OrderRef, OutRefundNo, RetryClass, WxError};

use crate::gateway::WeChat;
use crate::ledger::{
    Changes, ExternalOutcome, ExternalRefund, LeaseOutcome, Ledger, LedgerError, NewRefund, Patch,
    RecordOutcome, Transition, TransitionOutcome,
};
use crate::state::{LastError, RefundRecord, RefundStatus, UnixMillis};

/// Timings of the workflows. Production defaults; the local stack and tests shorten them.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How long one attempt may hold a refund; longer than the WeChat client's total timeout plus
    /// pacing waits, so a live attempt is never taken over.
    pub lease_ttl: Duration,
    /// First check of an accepted refund (wallet refunds settle within minutes).
    pub first_check: Duration,
    /// Shortest and longest wait between checks or re-submissions.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A refund PROCESSING longer than this is logged as needing a person.
    pub stale_processing: Duration,
    /// Due refunds read per page by the poller.
    pub page_size: usize,
    /// Passed to WeChat as `notify_url` when set.
    pub notify_url: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            lease_ttl: Duration::from_secs(90),
            first_check: Duration::from_secs(60),
            min_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(4 * 3600),
            stale_processing: Duration::from_secs(7 * 24 * 3600),
            page_size: 25,
            notify_url: None,
        }
    }
}

/// A validated refund request from the merchant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundCommand {
    pub out_refund_no: OutRefundNo,
    pub order: OrderRef,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_desc: Option<String>,
    pub refund_account: Option<RefundAccount>,
}

impl RefundCommand {
    /// SHA-256 over the canonical fields: the same number with another request is a reused key.
    pub fn request_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.out_refund_no.as_str(),
            &self.order.key(),
            &self.total_fee.to_string(),
            &self.refund_fee.to_string(),
            self.refund_desc.as_deref().unwrap_or(""),
            self.refund_account.map(|a| a.as_str()).unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// What the merchant gets back from a submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Recorded now and (normally) handed to WeChat.
    New(RefundRecord),
    /// The same request was made before: the stored record.
    Replay(RefundRecord),
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("out_refund_no {0} was already used for a different refund request")]
    KeyReused(OutRefundNo),
    #[error("refund {0} is being submitted right now; retry shortly")]
    InProgress(OutRefundNo),
    #[error(
        "refund_fee {requested} exceeds what is still refundable on this order ({available} of {total_fee} fen)"
    )]
    AmountExceeded {
        requested: Fen,
        available: Fen,
        total_fee: Fen,
    },
    #[error("the order already has the maximum of 50 refunds")]
    TooManyRefunds,
    #[error(
        "total_fee {given} differs from the order's total_fee {stored} recorded with its earlier refunds"
    )]
    TotalFeeMismatch { given: Fen, stored: Fen },
    #[error("refund {0} not found")]
    NotFound(OutRefundNo),
    #[error("WeChat Pay: {0}")]
    Upstream(String),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("internal: {0}")]
    Internal(String),
}

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

pub struct RefundService {
    ledger: Arc<dyn Ledger>,
    wechat: Arc<dyn WeChat>,
    cfg: ServiceConfig,
}

fn to_domain(s: &wxpay::RefundStatus) -> RefundStatus {
    match s {
        wxpay::RefundStatus::Success => RefundStatus::Success,
        wxpay::RefundStatus::RefundClose => RefundStatus::RefundClose,
        wxpay::RefundStatus::Change => RefundStatus::Change,
        // PROCESSING, and values we don't know: not final, check again later.
        wxpay::RefundStatus::Processing | wxpay::RefundStatus::Other(_) => RefundStatus::Processing,
    }
}

/// A failed call as the merchant's error (the query could not be answered).
fn upstream<T>(outcome: CallOutcome<T>) -> ServiceError {
    match outcome {
        CallOutcome::Ok(_) => ServiceError::Internal("upstream() called on a success".into()),
        CallOutcome::Rejected(e) => ServiceError::Upstream(e.to_string()),
        CallOutcome::NotSent(r) => ServiceError::Upstream(r),
        CallOutcome::Unknown(r) => ServiceError::Upstream(r.to_string()),
    }
}

fn wx_error(e: &WxError) -> LastError {
    LastError {
        code: e.code.as_str().to_string(),
        message: e.description.clone(),
    }
}

impl RefundService {
    pub fn new(ledger: Arc<dyn Ledger>, wechat: Arc<dyn WeChat>, cfg: ServiceConfig) -> Self {
        RefundService {
            ledger,
            wechat,
            cfg,
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.cfg
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    // ---- submit ---------------------------------------------------------------------------------

    /// Records the refund (with its reservation) before anything is sent, then submits it once.
    pub async fn submit(&self, cmd: RefundCommand) -> Result<Submitted, ServiceError> {
        let request = self.wire_request(&cmd);
        request.validate().map_err(|e| ServiceError::Invalid {
            field: "request",
            message: e.to_string(),
        })?;
        let now = UnixMillis::now();
        let new = NewRefund {
            out_refund_no: cmd.out_refund_no.clone(),
            order: cmd.order.clone(),
            total_fee: cmd.total_fee,
            refund_fee: cmd.refund_fee,
            refund_desc: cmd.refund_desc.clone(),
            refund_account: cmd.refund_account.map(|a| a.as_str().to_string()),
            request_hash: cmd.request_hash(),
            now,
            // If this process dies before taking the lease, the poller picks the refund up then.
            next_check_at: now.plus(self.cfg.lease_ttl),
        };
        match self.ledger.record(new).await? {
            RecordOutcome::Created(rec) => {
                info!(out_refund_no = %rec.out_refund_no, order = %rec.order, refund_fee = rec.refund_fee.get(), "refund recorded");
                Ok(Submitted::New(self.attempt(rec).await?))
            }
            RecordOutcome::Existing(rec) => match rec.status {
                // Recorded by a caller that never got to submit it (or is about to): the lease decides.
                RefundStatus::Recorded => Ok(Submitted::Replay(self.attempt(rec).await?)),
                RefundStatus::Submitting
                    if rec.lease.as_ref().is_some_and(|l| l.expires_at > now) =>
                {
                    Err(ServiceError::InProgress(rec.out_refund_no))
                }
                _ => Ok(Submitted::Replay(rec)),
            },
            RecordOutcome::KeyReused(rec) => Err(ServiceError::KeyReused(rec.out_refund_no)),
            RecordOutcome::AmountExceeded { book } => Err(ServiceError::AmountExceeded {
                requested: cmd.refund_fee,
                available: book.available(),
                total_fee: book.total_fee,
            }),
            RecordOutcome::TooManyRefunds { .. } => Err(ServiceError::TooManyRefunds),
            RecordOutcome::TotalFeeMismatch { book } => Err(ServiceError::TotalFeeMismatch {
                given: cmd.total_fee,
                stored: book.total_fee,
            }),
        }
    }

    fn wire_request(&self, cmd: &RefundCommand) -> RefundRequest {
        RefundRequest {
            order: cmd.order.clone(),
            out_refund_no: cmd.out_refund_no.clone(),
            total_fee: cmd.total_fee,
            refund_fee: cmd.refund_fee,
            refund_desc: cmd.refund_desc.clone(),
            refund_account: cmd.refund_account,
            notify_url: self.cfg.notify_url.clone(),
        }
    }

    fn record_request(&self, rec: &RefundRecord) -> RefundRequest {
        RefundRequest {
            order: rec.order.clone(),
            out_refund_no: rec.out_refund_no.clone(),
            total_fee: rec.total_fee,
            refund_fee: rec.refund_fee,
            refund_desc: rec.refund_desc.clone(),
            refund_account: rec.refund_account.as_deref().and_then(|a| a.parse().ok()),
            notify_url: self.cfg.notify_url.clone(),
        }
    }

    /// Takes the lease and submits. A held lease means someone else is submitting right now.
    async fn attempt(&self, rec: RefundRecord) -> Result<RefundRecord, ServiceError> {
        let owner = uuid::Uuid::new_v4().to_string();
        let now = UnixMillis::now();
        match self
            .ledger
            .acquire_lease(&rec.out_refund_no, &owner, self.cfg.lease_ttl, now)
            .await?
        {
            LeaseOutcome::Acquired(rec) => self.submit_leased(rec, &owner).await,
            LeaseOutcome::Held(rec) => Err(ServiceError::InProgress(rec.out_refund_no)),
            LeaseOutcome::NotLeasable(rec) => Ok(rec),
            LeaseOutcome::NotFound => Err(ServiceError::NotFound(rec.out_refund_no)),
        }
    }

    /// Calls refund apply for a refund we hold the lease on and records what came back.
    async fn submit_leased(
        &self,
        rec: RefundRecord,
        owner: &str,
    ) -> Result<RefundRecord, ServiceError> {
        let request = self.record_request(&rec);
        let outcome = self.wechat.refund(&request).await;
        let now = UnixMillis::now();
        let (to, changes) = match outcome {
            CallOutcome::Ok(resp)
                if resp.out_refund_no != rec.out_refund_no || resp.refund_fee != rec.refund_fee =>
            {
                error!(out_refund_no = %rec.out_refund_no, reply_out_refund_no = %resp.out_refund_no, ours = rec.refund_fee.get(), reply_refund_fee = resp.refund_fee.get(), "acceptance does not match the request; treating the outcome as unknown");
                (
                    RefundStatus::Unknown,
                    Changes {
                        last_error: Patch::Set(LastError {
                            code: "REPLY_MISMATCH".into(),
                            message: "WeChat's acceptance names another refund or amount".into(),
                        }),
                        next_check_at: Some(now.plus(self.cfg.min_backoff)),
                        ..Changes::default()
                    },
                )
            }
            CallOutcome::Ok(resp) => {
                info!(out_refund_no = %rec.out_refund_no, refund_id = %resp.refund_id, "refund accepted by WeChat");
                (
                    RefundStatus::Processing,
                    Changes {
                        refund_id: Some(resp.refund_id),
                        transaction_id: Some(resp.transaction_id),
                        out_trade_no: Some(resp.out_trade_no),
                        last_error: Patch::Clear,
                        next_check_at: Some(now.plus(self.cfg.first_check)),
                        ..Changes::default()
                    },
                )
            }
            CallOutcome::Rejected(e) => {
                let definitive = matches!(e.class(), RetryClass::Final | RetryClass::FixRequest);
                if definitive && rec.attempts > 1 {
                    // An earlier attempt of this number may have been taken (SYSTEMERROR has been
                    // seen on refunds that succeeded): a refusal of the repeat proves nothing about
                    // it. Ask before releasing the amount.
                    return self.verify_before_failing(rec, owner, e).await;
                }
                let status = match e.class() {
                    RetryClass::Final | RetryClass::FixRequest => RefundStatus::Failed,
                    RetryClass::Misconfigured => {
                        error!(out_refund_no = %rec.out_refund_no, err_code = %e.code, err_code_des = %e.description, "merchant configuration rejected by WeChat (key, certificate or account): an operator must fix it; the refund waits");
                        RefundStatus::RetryWait
                    }
                    RetryClass::RetrySame | RetryClass::RetryLater | RetryClass::NotFound => {
                        RefundStatus::RetryWait
                    }
                };
                warn!(out_refund_no = %rec.out_refund_no, err_code = %e.code, err_code_des = %e.description, next = %status, "refund refused by WeChat");
                (
                    status,
                    Changes {
                        last_error: Patch::Set(wx_error(&e)),
                        next_check_at: Some(now.plus(self.retry_delay(rec.attempts))),
                        ..Changes::default()
                    },
                )
            }
            CallOutcome::NotSent(reason) => {
                warn!(out_refund_no = %rec.out_refund_no, %reason, "refund not sent");
                (
                    RefundStatus::RetryWait,
                    Changes {
                        last_error: Patch::Set(LastError {
                            code: "NOT_SENT".into(),
                            message: reason,
                        }),
                        next_check_at: Some(now.plus(self.retry_delay(rec.attempts))),
                        ..Changes::default()
                    },
                )
            }
            CallOutcome::Unknown(reason) => {
                warn!(out_refund_no = %rec.out_refund_no, reason = %reason, "refund outcome unknown; will query");
                (
                    RefundStatus::Unknown,
                    Changes {
                        last_error: Patch::Set(LastError {
                            code: reason.code().into(),
                            message: reason.to_string(),
                        }),
                        next_check_at: Some(now.plus(self.cfg.min_backoff)),
                        ..Changes::default()
                    },
                )
            }
        };
        self.apply(&rec, Some(owner), to, changes, now).await
    }

    /// A definitive refusal of a repeated attempt: query the number (still holding the lease) and
    /// fail the refund only if WeChat has never taken it.
    async fn verify_before_failing(
        &self,
        rec: RefundRecord,
        owner: &str,
        refusal: WxError,
    ) -> Result<RefundRecord, ServiceError> {
        let query = RefundQueryRequest {
            selector: QuerySelector::OutRefundNo(rec.out_refund_no.clone()),
            offset: None,
        };
        let outcome = self.wechat.query(&query).await;
        let now = UnixMillis::now();
        let (to, last_error, delay) = match outcome {
            CallOutcome::Ok(resp) => {
                if let Some(found) = resp
                    .refunds
                    .iter()
                    .find(|r| r.out_refund_no == rec.out_refund_no)
                {
                    warn!(out_refund_no = %rec.out_refund_no, err_code = %refusal.code, "repeat refused, but an earlier attempt was taken: adopting it");
                    return self.adopt(&rec, Some(owner), found, now).await;
                }
                (
                    RefundStatus::Unknown,
                    wx_error(&refusal),
                    self.cfg.min_backoff,
                )
            }
            CallOutcome::Rejected(e) if e.code == ErrCode::RefundNotExist => {
                warn!(out_refund_no = %rec.out_refund_no, err_code = %refusal.code, err_code_des = %refusal.description, "refund refused for good and never taken");
                (
                    RefundStatus::Failed,
                    wx_error(&refusal),
                    self.cfg.min_backoff,
                )
            }
            // Cannot tell: keep the amount and find out later.
            _ => (
                RefundStatus::Unknown,
                wx_error(&refusal),
                self.cfg.min_backoff,
            ),
        };
        let changes = Changes {
            last_error: Patch::Set(last_error),
            next_check_at: Some(now.plus(delay)),
            ..Changes::default()
        };
        self.apply(&rec, Some(owner), to, changes, now).await
    }

    /// A fenced transition; a conflict means someone else moved the refund on: theirs stands.
    async fn apply(
        &self,
        rec: &RefundRecord,
        owner: Option<&str>,
        to: RefundStatus,
        changes: Changes,
        now: UnixMillis,
    ) -> Result<RefundRecord, ServiceError> {
        let t = Transition {
            out_refund_no: rec.out_refund_no.clone(),
            expected_status: rec.status,
            expected_version: rec.version,
            lease_owner: owner.map(str::to_string),
            to,
            changes,
            now,
        };
        match self.ledger.transition(t).await? {
            TransitionOutcome::Applied(after) => {
                if after.status.needs_person() {
                    error!(out_refund_no = %after.out_refund_no, order = %after.order, "refund in CHANGE: the bank refused it; a person must handle it in the merchant platform");
                }
                Ok(after)
            }
            TransitionOutcome::Conflict(current) => {
                warn!(out_refund_no = %rec.out_refund_no, from = %rec.status, to = %to, now_at = %current.status, "refund moved on concurrently; keeping the other writer's state");
                Ok(current)
            }
            TransitionOutcome::NotFound => Err(ServiceError::NotFound(rec.out_refund_no.clone())),
            TransitionOutcome::Illegal { from, to } => Err(ServiceError::Internal(format!(
                "illegal transition {from} -> {to}"
            ))),
        }
    }

    /// Exponential from `min_backoff` by attempt, capped at `max_backoff`.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.cfg
            .min_backoff
            .saturating_mul(factor)
            .min(self.cfg.max_backoff)
    }

    /// Checks of an accepted refund get sparser as it ages: half its age, within the bounds.
    fn processing_delay(&self, rec: &RefundRecord, now: UnixMillis) -> Duration {
        (rec.created_at.age_at(now) / 2)
            .min(self.cfg.max_backoff)
            .max(self.cfg.min_backoff)
    }

    // ---- get / reconcile ------------------------------------------------------------------------

    pub async fn get(&self, no: &OutRefundNo, refresh: bool) -> Result<RefundRecord, ServiceError> {
        let rec = self
            .ledger
            .get(no)
            .await?
            .ok_or_else(|| ServiceError::NotFound(no.clone()))?;
        if !refresh || rec.status.is_final() || rec.status == RefundStatus::Submitting {
            return Ok(rec);
        }
        if rec.status == RefundStatus::Recorded {
            return self.attempt(rec).await;
        }
        self.reconcile(rec, None).await
    }

    /// Asks WeChat about one refund by its number and adopts what it says. For UNKNOWN and
    /// RETRY_WAIT refunds that WeChat has never seen, re-submits the same number.
    async fn reconcile(
        &self,
        rec: RefundRecord,
        owner: Option<&str>,
    ) -> Result<RefundRecord, ServiceError> {
        let query = RefundQueryRequest {
            selector: QuerySelector::OutRefundNo(rec.out_refund_no.clone()),
            offset: None,
        };
        let outcome = self.wechat.query(&query).await;
        let now = UnixMillis::now();
        match outcome {
            CallOutcome::Ok(resp) => {
                match resp
                    .refunds
                    .iter()
                    .find(|r| r.out_refund_no == rec.out_refund_no)
                {
                    Some(found) => self.adopt(&rec, owner, found, now).await,
                    None => {
                        self.recheck_later(
                            &rec,
                            owner,
                            LastError {
                                code: "QUERY_MISMATCH".into(),
                                message: "query reply does not list this refund".into(),
                            },
                            now,
                        )
                        .await
                    }
                }
            }
            CallOutcome::Rejected(e) if e.code == ErrCode::RefundNotExist => match rec.status {
                RefundStatus::Submitting => match owner {
                    Some(o) => self.submit_leased(rec, o).await,
                    None => Ok(rec),
                },
                RefundStatus::Unknown | RefundStatus::RetryWait if !rec.is_due(now) => {
                    // A refresh or a notification must not skip the backoff WeChat asked for.
                    Ok(rec)
                }
                RefundStatus::Unknown | RefundStatus::RetryWait => {
                    info!(out_refund_no = %rec.out_refund_no, "WeChat has no such refund; re-submitting the same number");
                    self.attempt(rec).await
                }
                _ => {
                    error!(out_refund_no = %rec.out_refund_no, status = %rec.status, "WeChat says REFUNDNOTEXIST for a refund it accepted");
                    self.recheck_later(&rec, owner, wx_error(&e), now).await
                }
            },
            CallOutcome::Rejected(e) => self.recheck_later(&rec, owner, wx_error(&e), now).await,
            CallOutcome::NotSent(reason) => {
                self.recheck_later(
                    &rec,
                    owner,
                    LastError {
                        code: "NOT_SENT".into(),
                        message: reason,
                    },
                    now,
                )
                .await
            }
            CallOutcome::Unknown(reason) => {
                self.recheck_later(
                    &rec,
                    owner,
                    LastError {
                        code: reason.code().into(),
                        message: reason.to_string(),
                    },
                    now,
                )
                .await
            }
        }
    }

    /// Moves the refund to what WeChat reports for it.
    async fn adopt(
        &self,
        rec: &RefundRecord,
        owner: Option<&str>,
        found: &WxRefundRecord,
        now: UnixMillis,
    ) -> Result<RefundRecord, ServiceError> {
        let to = to_domain(&found.refund_status);
        if found.refund_fee != rec.refund_fee {
            error!(out_refund_no = %rec.out_refund_no, ours = rec.refund_fee.get(), wechat = found.refund_fee.get(), "WeChat reports another refund_fee for this number: not adopted, needs a person");
            let e = LastError {
                code: "AMOUNT_MISMATCH".into(),
                message: format!(
                    "WeChat reports refund_fee {} for this number",
                    found.refund_fee
                ),
            };
            return self.recheck_later(rec, owner, e, now).await;
        }
        let changes = Changes {
            refund_id: Some(found.refund_id.clone()),
            last_error: Patch::Clear,
            refund_recv_account: found.refund_recv_account.clone(),
            success_time: found.refund_success_time.clone(),
            next_check_at: (!to.is_final()).then(|| now.plus(self.processing_delay(rec, now))),
            ..Changes::default()
        };
        if to == RefundStatus::Processing && rec.created_at.age_at(now) > self.cfg.stale_processing
        {
            error!(out_refund_no = %rec.out_refund_no, "refund PROCESSING for over the stale limit: needs a person");
        }
        self.apply(rec, owner, to, changes, now).await
    }

    /// Nothing learned: keep the status, note the error, check again later.
    async fn recheck_later(
        &self,
        rec: &RefundRecord,
        owner: Option<&str>,
        last_error: LastError,
        now: UnixMillis,
    ) -> Result<RefundRecord, ServiceError> {
        let (to, delay) = match rec.status {
            // An attempt we took over and could not resolve becomes an unknown outcome.
            RefundStatus::Submitting => (RefundStatus::Unknown, self.cfg.min_backoff),
            // Checks of refunds whose fate is open get sparser with age, so an unanswerable
            // refund does not cost a query a minute forever.
            RefundStatus::Processing | RefundStatus::Unknown => {
                (rec.status, self.processing_delay(rec, now))
            }
            s => (s, self.retry_delay(rec.attempts)),
        };
        let changes = Changes {
            last_error: Patch::Set(last_error),
            next_check_at: Some(now.plus(delay)),
            ..Changes::default()
        };
        if !rec.status.can_move_to(to) {
            return Ok(rec.clone());
        }
        self.apply(rec, owner, to, changes, now).await
    }

    // ---- poll -----------------------------------------------------------------------------------

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
                match self.drive(rec).await {
                    Ok(after) => {
                        if after.attempts > attempts_before {
                            report.retried += 1;
                        }
                        if after.status.is_final() {
                            report.settled += 1;
                            if after.status.needs_person() {
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
        let level_info = report.examined > 0 || report.errors > 0;
        if !level_info {
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

    /// One step for one due refund.
    async fn drive(&self, rec: RefundRecord) -> Result<RefundRecord, ServiceError> {
        match rec.status {
            RefundStatus::Recorded | RefundStatus::RetryWait => self.attempt(rec).await,
            RefundStatus::Processing | RefundStatus::Unknown => self.reconcile(rec, None).await,
            RefundStatus::Submitting => {
                // An abandoned attempt (its lease expired): take it over, then find out what happened.
                let owner = uuid::Uuid::new_v4().to_string();
                match self
                    .ledger
                    .acquire_lease(
                        &rec.out_refund_no,
                        &owner,
                        self.cfg.lease_ttl,
                        UnixMillis::now(),
                    )
                    .await?
                {
                    LeaseOutcome::Acquired(r) => self.reconcile(r, Some(&owner)).await,
                    LeaseOutcome::Held(r) => Err(ServiceError::InProgress(r.out_refund_no)),
                    LeaseOutcome::NotLeasable(r) => Ok(r),
                    LeaseOutcome::NotFound => Err(ServiceError::NotFound(rec.out_refund_no)),
                }
            }
            _ => Ok(rec),
        }
    }

    // ---- list by order --------------------------------------------------------------------------

    /// Every refund of the order: WeChat's list (all pages via `offset`) merged with the ledger.
    /// Refunds WeChat has and we don't (made in the merchant platform) are recorded as external so
    /// they count against the order; ledger refunds WeChat reports as settled are settled.
    pub async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, ServiceError> {
        let selector = match order {
            OrderRef::OutTradeNo(n) => QuerySelector::OutTradeNo(n.clone()),
            OrderRef::TransactionId(t) => QuerySelector::TransactionId(t.clone()),
        };
        let mut remote: Vec<WxRefundRecord> = Vec::new();
        let mut order_total: Option<Fen> = None;
        let mut offset = 0u32;
        // 50 refunds at 10 a page: six pages at most; the bound guards against a looping reply.
        for _ in 0..8 {
            match self
                .wechat
                .query(&RefundQueryRequest {
                    selector: selector.clone(),
                    offset: Some(offset),
                })
                .await
            {
                CallOutcome::Ok(resp) => {
                    order_total = order_total.or(resp.total_fee);
                    let next = resp.next_offset(offset);
                    remote.extend(resp.refunds);
                    match next {
                        Some(n) => offset = n,
                        None => break,
                    }
                }
                CallOutcome::Rejected(e) if e.code == ErrCode::RefundNotExist => break,
                // WeChat asks for per-number queries past 20 partial refunds and may refuse deep
                // offsets: keep the pages read; the ledger (and its poller) covers the rest.
                CallOutcome::Rejected(e) if e.code == ErrCode::ParamError && offset > 0 => {
                    warn!(order = %order, offset, err_code_des = %e.description, "order query paging refused; listing what was read plus the ledger");
                    break;
                }
                other => return Err(upstream(other)),
            }
        }
        let mut local = self.ledger.list_by_order(order).await?;
        let now = UnixMillis::now();
        for found in &remote {
            match local
                .iter()
                .position(|r| r.out_refund_no == found.out_refund_no)
            {
                Some(i) => {
                    let rec = &local[i];
                    let to = to_domain(&found.refund_status);
                    let movable = !rec.status.is_final()
                        && rec.status != RefundStatus::Submitting
                        && rec.status != to
                        && rec.status.can_move_to(to);
                    if movable {
                        let updated = self.adopt(rec, None, found, now).await?;
                        local[i] = updated;
                    }
                }
                None => {
                    let existing = self.ledger.get(&found.out_refund_no).await?;
                    let rec = match existing {
                        Some(r) => r,
                        None => {
                            let ext = self.external(order, found, order_total, now)?;
                            self.record_external(ext).await?
                        }
                    };
                    local.push(rec);
                }
            }
        }
        local.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.out_refund_no.cmp(&b.out_refund_no))
        });
        Ok(local)
    }

    /// A refund WeChat reports that the ledger does not have (made in the merchant platform).
    fn external(
        &self,
        order: &OrderRef,
        found: &WxRefundRecord,
        order_total: Option<Fen>,
        now: UnixMillis,
    ) -> Result<ExternalRefund, ServiceError> {
        // The order's total is fixed by the first record; a guess would freeze a wrong one.
        let total_fee = order_total.ok_or_else(|| {
            ServiceError::Upstream("WeChat's refund query reply lacks the order's total_fee".into())
        })?;
        Ok(ExternalRefund {
            out_refund_no: found.out_refund_no.clone(),
            order: order.clone(),
            out_trade_no: None,
            transaction_id: None,
            refund_id: Some(found.refund_id.clone()),
            total_fee,
            refund_fee: found.refund_fee,
            status: to_domain(&found.refund_status),
            refund_account: found.refund_account.clone(),
            refund_recv_account: found.refund_recv_account.clone(),
            success_time: found.refund_success_time.clone(),
            now,
            next_check_at: Some(now.plus(self.cfg.min_backoff)),
        })
    }

    async fn record_external(&self, ext: ExternalRefund) -> Result<RefundRecord, ServiceError> {
        match self.ledger.record_external(ext).await? {
            ExternalOutcome::Created(r) => {
                warn!(out_refund_no = %r.out_refund_no, order = %r.order, "refund made outside wxrefund recorded as external");
                Ok(r)
            }
            ExternalOutcome::Existing(r) => Ok(r),
            ExternalOutcome::InvalidStatus(s) => Err(ServiceError::Internal(format!(
                "external refund with status {s}"
            ))),
        }
    }

    // ---- notification ---------------------------------------------------------------------------

    /// Handles WeChat's refund notification and returns the XML reply. The notification is a hint:
    /// its content is confirmed by a query before anything is written.
    pub async fn apply_notification(&self, body: &[u8]) -> String {
        let n = match self.wechat.decrypt_notification(body).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "refund notification rejected");
                return notify::fail_reply(&e.to_string());
            }
        };
        match self.confirm_notification(&n).await {
            Ok(rec) => {
                info!(out_refund_no = %rec.out_refund_no, out_trade_no = %n.out_trade_no, status = %rec.status, "refund notification applied");
                notify::SUCCESS_REPLY.to_string()
            }
            Err(e) => {
                warn!(out_refund_no = %n.out_refund_no, error = %e, "refund notification not applied; WeChat will retry");
                notify::fail_reply("temporarily unable to process")
            }
        }
    }

    async fn confirm_notification(
        &self,
        n: &RefundNotification,
    ) -> Result<RefundRecord, ServiceError> {
        match self.ledger.get(&n.out_refund_no).await? {
            Some(rec) if rec.status.is_final() || rec.status == RefundStatus::Submitting => Ok(rec),
            Some(rec) if rec.status == RefundStatus::Recorded => self.attempt(rec).await,
            Some(rec) => self.reconcile(rec, None).await,
            None => {
                // Made outside our API (merchant platform): confirm it exists, then record it.
                let query = RefundQueryRequest {
                    selector: QuerySelector::OutRefundNo(n.out_refund_no.clone()),
                    offset: None,
                };
                let resp = match self.wechat.query(&query).await {
                    CallOutcome::Ok(resp) => resp,
                    other => return Err(upstream(other)),
                };
                let found = resp
                    .refunds
                    .iter()
                    .find(|r| r.out_refund_no == n.out_refund_no)
                    .ok_or_else(|| {
                        ServiceError::Upstream("query does not confirm the notified refund".into())
                    })?;
                // Only what the signed query says is trusted; the notification is unauthenticated.
                let out_trade_no = resp.out_trade_no.clone().ok_or_else(|| {
                    ServiceError::Upstream("query reply lacks out_trade_no".into())
                })?;
                let mut ext = self.external(
                    &OrderRef::OutTradeNo(out_trade_no.clone()),
                    found,
                    resp.total_fee,
                    UnixMillis::now(),
                )?;
                ext.out_trade_no = Some(out_trade_no);
                ext.transaction_id = resp.transaction_id.clone();
                self.record_external(ext).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> RefundCommand {
        RefundCommand {
            out_refund_no: "R-1".parse().unwrap(),
            order: OrderRef::OutTradeNo("ORDER-1".parse().unwrap()),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
        }
    }

    #[test]
    fn request_hash_covers_every_canonical_field() {
        let base = cmd().request_hash();
        assert_eq!(base, cmd().request_hash());
        let mut c = cmd();
        c.refund_fee = Fen::new(11).unwrap();
        assert_ne!(c.request_hash(), base);
        let mut c = cmd();
        c.refund_desc = Some("x".into());
        assert_ne!(c.request_hash(), base);
        let mut c = cmd();
        c.order = OrderRef::TransactionId("ORDER1".parse().unwrap());
        assert_ne!(c.request_hash(), base);
        let mut c = cmd();
        c.refund_account = Some(RefundAccount::RechargeFunds);
        assert_ne!(c.request_hash(), base);
    }

    // ---- workflows against a scripted WeChat ---------------------------------------------------
    //
    // The sandbox cannot produce "an attempt taken but answered SYSTEMERROR, then the repeat
    // refused for good", so these drive the workflows against a scripted port (the one fake: the
    // end-to-end suite in tests/ covers everything the sandbox can do).

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use wxpay::errors::Stage;
    use wxpay::notify::{NotifyError, RefundNotification};
    use wxpay::query::RefundQueryResponse;
    use wxpay::refund::RefundResponse;
    use wxpay::{MchId, XmlMap};

    use crate::ledger::embedded::EmbeddedLedger;

    #[derive(Default)]
    struct Scripted {
        refunds: Mutex<VecDeque<CallOutcome<RefundResponse>>>,
        queries: Mutex<VecDeque<CallOutcome<RefundQueryResponse>>>,
    }

    #[async_trait]
    impl WeChat for Scripted {
        fn mch_id(&self) -> MchId {
            "1900000109".parse().unwrap()
        }
        async fn refund(&self, _: &RefundRequest) -> CallOutcome<RefundResponse> {
            self.refunds
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted refund reply")
        }
        async fn query(&self, _: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse> {
            self.queries
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted query reply")
        }
        async fn decrypt_notification(&self, _: &[u8]) -> Result<RefundNotification, NotifyError> {
            Err(NotifyError::MissingReqInfo)
        }
    }

    fn refused(code: &str) -> WxError {
        WxError {
            stage: Stage::Result,
            code: ErrCode::parse(code),
            description: code.to_lowercase(),
            return_msg: "OK".into(),
            raw: String::new(),
        }
    }

    fn found(status: wxpay::RefundStatus) -> RefundQueryResponse {
        RefundQueryResponse {
            transaction_id: None,
            out_trade_no: Some("ORDER-1".parse().unwrap()),
            total_fee: Some(Fen::new(100).unwrap()),
            settlement_total_fee: None,
            fee_type: None,
            cash_fee: None,
            refund_count: 1,
            total_refund_count: None,
            refunds: vec![WxRefundRecord {
                out_refund_no: "R-1".parse().unwrap(),
                refund_id: "5001".parse().unwrap(),
                refund_channel: None,
                refund_fee: Fen::new(10).unwrap(),
                settlement_refund_fee: None,
                refund_status: status,
                refund_account: None,
                refund_recv_account: None,
                refund_success_time: None,
                coupon_refund_fee: None,
                coupons: vec![],
            }],
            fields: XmlMap::new(),
        }
    }

    async fn service(wechat: Scripted) -> (RefundService, Arc<Scripted>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(EmbeddedLedger::open(dir.path().join("l.redb")).unwrap());
        let wechat = Arc::new(wechat);
        let cfg = ServiceConfig {
            min_backoff: Duration::ZERO,
            first_check: Duration::ZERO,
            ..ServiceConfig::default()
        };
        let svc = RefundService::new(ledger, Arc::clone(&wechat) as Arc<dyn WeChat>, cfg);
        (svc, wechat, dir)
    }

    async fn first_attempt_systemerror_then_final_refusal(
        query: CallOutcome<RefundQueryResponse>,
    ) -> (RefundRecord, crate::state::OrderBook) {
        // GIVEN a refund whose first attempt got SYSTEMERROR (maybe taken) and whose repeat is
        // refused for good
        let script = Scripted::default();
        script.refunds.lock().unwrap().extend([
            CallOutcome::Rejected(refused("SYSTEMERROR")),
            CallOutcome::Rejected(refused("USER_ACCOUNT_ABNORMAL")),
        ]);
        script.queries.lock().unwrap().push_back(query);
        let (svc, wechat, _dir) = service(script).await;
        let first = match svc.submit(cmd()).await.unwrap() {
            Submitted::New(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(first.status, RefundStatus::RetryWait);
        // WHEN the poller re-submits the same number
        let report = svc.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!((report.examined, report.retried), (1, 1));
        assert!(
            wechat.refunds.lock().unwrap().is_empty(),
            "the same number was sent twice"
        );
        assert!(
            wechat.queries.lock().unwrap().is_empty(),
            "WeChat was asked before failing"
        );
        let rec = svc.get(&"R-1".parse().unwrap(), false).await.unwrap();
        let book = svc.ledger().order(&cmd().order).await.unwrap().unwrap();
        (rec, book)
    }

    #[tokio::test]
    async fn a_final_refusal_of_a_repeat_adopts_the_earlier_attempt_when_wechat_has_it() {
        let (rec, book) = first_attempt_systemerror_then_final_refusal(CallOutcome::Ok(found(
            wxpay::RefundStatus::Processing,
        )))
        .await;
        // THEN the refund WeChat took is adopted and its amount stays reserved
        assert_eq!(rec.status, RefundStatus::Processing);
        assert_eq!(rec.refund_id.as_ref().map(|r| r.as_str()), Some("5001"));
        assert_eq!(book.reserved, Fen::new(10).unwrap());
    }

    #[tokio::test]
    async fn a_final_refusal_of_a_repeat_fails_only_when_wechat_never_took_it() {
        let (rec, book) = first_attempt_systemerror_then_final_refusal(CallOutcome::Rejected(
            refused("REFUNDNOTEXIST"),
        ))
        .await;
        // THEN FAILED with WeChat's reason, and the amount is released
        assert_eq!(rec.status, RefundStatus::Failed);
        assert_eq!(rec.last_error.unwrap().code, "USER_ACCOUNT_ABNORMAL");
        assert_eq!(book.reserved, Fen::ZERO);
    }

    #[tokio::test]
    async fn a_final_refusal_of_a_repeat_stays_unknown_when_the_query_fails() {
        let (rec, book) =
            first_attempt_systemerror_then_final_refusal(CallOutcome::NotSent("down".into())).await;
        // THEN the amount stays reserved until WeChat can be asked
        assert_eq!(rec.status, RefundStatus::Unknown);
        assert_eq!(book.reserved, Fen::new(10).unwrap());
    }

    #[tokio::test]
    async fn a_configuration_refusal_keeps_the_refund_waiting_not_failed() {
        let script = Scripted::default();
        script
            .refunds
            .lock()
            .unwrap()
            .push_back(CallOutcome::Rejected(refused("CERT_ERROR")));
        let (svc, _wechat, _dir) = service(script).await;
        let rec = match svc.submit(cmd()).await.unwrap() {
            Submitted::New(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(rec.status, RefundStatus::RetryWait);
        assert_eq!(rec.last_error.unwrap().code, "CERT_ERROR");
    }
}
