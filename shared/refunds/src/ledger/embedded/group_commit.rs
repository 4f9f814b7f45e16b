//! Group commit for the embedded ledger: one writer thread runs the write transactions that are
//! waiting, one after another, and makes the whole batch durable with **one** fsync.
//!
//! redb allows one writer at a time and a durable commit costs an fsync (0.5 ms median, 8 ms at
//! p99 on the test machine's disk), so one fsync per operation caps the local stack at a few
//! hundred refunds a second. Here every transaction of a batch but the last commits with
//! `Durability::None` (applied and visible, not yet persisted), and the last commits with
//! `Durability::Immediate`, which persists everything before it (redb: "Commits with this
//! durability level will not be persisted to disk unless followed by a commit with
//! `Durability::Immediate`"). If the last one writes nothing, an empty durable transaction does
//! the flush. Each operation is still its own transaction, so a refusal or an error rolls back
//! only that operation.
//!
//! **No answer leaves before its batch is durable**: the answers of a batch are sent after the
//! flush, and if the flush fails every operation of the batch answers `Unavailable` (even a
//! refusal, which may rest on an earlier operation of the batch). A reader
//! ([`super::EmbeddedLedger`]'s reads) may see a commit up to one fsync before it is durable; a
//! crash in that window loses only writes nobody was told about, which is what a crash before the
//! commit loses too. Nothing is acted upon (WeChat called, event published) before the write's
//! answer, so nothing is acted upon before it is durable.
//!
//! At low load a batch is one operation committed durably, exactly as without grouping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use super::store;
use crate::ledger::LedgerError;

/// Most operations one fsync covers: bounds the wait of the first in a batch.
const MAX_BATCH: usize = 256;

/// One operation, run by the writer thread in its own transaction with the durability it is
/// given. It says whether it committed and leaves its answer to be sent after the flush.
type Job = Box<dyn FnOnce(&Database, Durability) -> Ran + Send>;

struct Ran {
    committed: bool,
    /// Sends the operation's answer; `Some` is the batch's flush error, which replaces it.
    answer: Box<dyn FnOnce(Option<LedgerError>) + Send>,
}

/// Counts of what the writer did, shared with the ledger handles.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Operations whose transaction committed.
    pub commits: AtomicU64,
    /// Durable commits (each one fsync): at most one per batch.
    pub fsyncs: AtomicU64,
}

/// The writer thread and the queue to it. Dropping the last handle closes the queue and waits for
/// the thread to finish its batch, so the database file is closed when the ledger is.
pub(super) struct GroupCommit {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

impl GroupCommit {
    pub fn start(db: Arc<Database>) -> Result<Self, LedgerError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn({
                let counters = Arc::clone(&counters);
                move || run(&db, &queue, &counters)
            })
            .map_err(|e| LedgerError::Unavailable(format!("start the ledger writer: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            counters,
        })
    }

    /// Runs `f` in one write transaction on the writer thread; it commits when `f` says so,
    /// otherwise it aborts (a refusal writes nothing). Answers once the commit is durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<(T, bool), LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, LedgerError>>();
        let counters = Arc::clone(&self.counters);
        let job: Job = Box::new(move |db, durability| {
            let result = one_transaction(db, durability, f);
            let committed = matches!(result, Ok((_, true)));
            if committed {
                counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            Ran {
                committed,
                answer: Box::new(move |flush_failed| {
                    let out = match flush_failed {
                        Some(e) => Err(e),
                        None => result.map(|(out, _)| out),
                    };
                    // The caller may have gone (its request was dropped): nothing to tell.
                    let _ = reply.send(out);
                }),
            }
        });
        let stopped = || LedgerError::Unavailable("the ledger writer has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            // A panic in the writer already failed its callers; nothing more to report here.
            let _ = thread.join();
        }
    }
}

fn one_transaction<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<(T, bool), LedgerError>,
) -> Result<(T, bool), LedgerError> {
    let mut tx = db.begin_write().map_err(store)?;
    tx.set_durability(durability).map_err(store)?;
    let (out, commit) = f(&tx)?;
    if commit {
        tx.commit().map_err(store)?;
    } else {
        tx.abort().map_err(store)?;
    }
    Ok((out, commit))
}

/// The writer: takes what is queued (at most [`MAX_BATCH`]), runs it, flushes once, answers.
fn run(db: &Database, queue: &Receiver<Job>, counters: &Counters) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut ran: Vec<Ran> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let last = batch.len() - 1;
        // A commit with Durability::None that no durable commit has covered yet.
        let mut unflushed = false;
        for (i, job) in batch.drain(..).enumerate() {
            let durability = if i == last {
                Durability::Immediate
            } else {
                Durability::None
            };
            let r = job(db, durability);
            if r.committed {
                unflushed = i != last;
                if i == last {
                    counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
            }
            ran.push(r);
        }
        let flush_failed = if unflushed {
            flush(db).err().map(|e| e.to_string())
        } else {
            None
        };
        if unflushed && flush_failed.is_none() {
            counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        for r in ran.drain(..) {
            (r.answer)(flush_failed.as_ref().map(|e| {
                LedgerError::Unavailable(format!("the batch's durable commit failed: {e}"))
            }));
        }
    }
}

/// An empty durable commit: persists the non-durable commits before it.
fn flush(db: &Database) -> Result<(), LedgerError> {
    let mut tx = db.begin_write().map_err(store)?;
    tx.set_durability(Durability::Immediate).map_err(store)?;
    tx.commit().map_err(store)
}
