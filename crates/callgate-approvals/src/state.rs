//! The held call's state machine and the rules of segregation of duties.
//!
//! ```text
//! pending ──approve (enough distinct approvers)──▶ approved ──execute──▶ executing ──▶ succeeded
//!    │                                               │  ▲                  │        └─▶ failed
//!    │                                               │  └──release (audit log down)──┤
//!    ├─deny (any eligible reviewer)──▶ denied        ├─revoke──▶ revoked   └─crash──▶ unknown
//!    ├─ttl passes──▶ expired                          ├─approved_ttl passes──▶ expired
//!    └─requester cancels──▶ cancelled                 └─requester cancels──▶ cancelled
//! ```
//!
//! Rules, each enforced by [`Approval::review`]:
//! - The requester never reviews their own call: not the human it is for, not the agent that
//!   asked for it. There is no administrator exception.
//! - A review must be a person's own act: a delegated credential (an agent acting for someone)
//!   cannot review.
//! - The reviewer must be in one of the required groups *by their current credential* (the
//!   caller passes the token's groups, never groups obtained through a grant).
//! - One review per person. An approval counts once, for one group (the reviewer's choice, or
//!   the group that still needs the most approvers).
//! - Any eligible reviewer's denial ends the request: deny wins.
//! - A review that arrives after the request is resolved is recorded and changes nothing.
//!
//! The store applies each transition with compare-and-swap on a version, so concurrent
//! reviews, a review racing a cancellation, or two executors resolve to exactly one outcome.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::Requirement;

/// Where a held call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Executing,
    Succeeded,
    Failed,
    Denied,
    Expired,
    Cancelled,
    Revoked,
    /// Execution started but Callgate stopped before the upstream's answer was stored: the
    /// call may or may not have run, and is never run again automatically.
    Unknown,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Pending,
        State::Approved,
        State::Executing,
        State::Succeeded,
        State::Failed,
        State::Denied,
        State::Expired,
        State::Cancelled,
        State::Revoked,
        State::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Executing => "executing",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Revoked => "revoked",
            State::Unknown => "unknown",
        }
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Approved | State::Executing)
    }

    /// Whether reviews can still change the outcome.
    pub fn is_open(self) -> bool {
        self == State::Pending
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// Who asked for the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// The human (or service account) the call is for.
    pub subject: String,
    /// The agent or service that asked on their behalf, when delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl Requester {
    /// Whether `subject` is this requester, as the human or as their agent.
    pub fn is(&self, subject: &str) -> bool {
        self.subject == subject || self.actor.as_deref() == Some(subject)
    }
}

/// A person reviewing, as their current credential shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub subject: String,
    /// Groups from the credential itself — never from grants.
    pub groups: Vec<String>,
    /// The credential is an agent's or service's acting for someone.
    pub delegated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
}

/// One person's review, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub reviewer: String,
    pub verdict: Verdict,
    /// The group an approval counted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// False for a review that arrived after the request was resolved.
    pub counted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub time_ms: u64,
}

/// Why a review was refused (nothing is changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the requester cannot review their own call")]
    SelfReview,
    #[error("a delegated credential cannot review; the person must review with their own")]
    Delegated,
    #[error("not a member of any reviewer group of this request")]
    NotEligible,
    #[error("not a member of reviewer group {0:?}, or it is not required by this request")]
    GroupNotEligible(String),
    #[error("this reviewer has already reviewed this request")]
    AlreadyReviewed,
}

/// Why a transition other than a review was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("only the requester can do this")]
    NotRequester,
    #[error("the request is {0}")]
    WrongState(State),
    #[error(transparent)]
    Review(#[from] ReviewError),
}

/// Which states run out of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiry {
    /// A call: pending after `ttl`, approved-but-not-executed after `approved_ttl`.
    #[default]
    PendingAndApproved,
    /// A grant: pending after `ttl`; once approved it lasts its own duration and stays
    /// revocable.
    PendingOnly,
    /// A break-glass item: it waits for acknowledgement however long that takes.
    Never,
}

/// A held call's approval: its requirement, requester, reviews and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub requirement: Requirement,
    pub requester: Requester,
    #[serde(default)]
    pub expiry: Expiry,
    pub state: State,
    pub reviews: Vec<ReviewRecord>,
    pub created_ms: u64,
    /// When the request became approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_ms: Option<u64>,
}

impl Approval {
    pub fn new(requirement: Requirement, requester: Requester, now_ms: u64) -> Approval {
        Approval {
            requirement,
            requester,
            expiry: Expiry::default(),
            state: State::Pending,
            reviews: Vec::new(),
            created_ms: now_ms,
            approved_ms: None,
        }
    }

    /// When the current state runs out: pending requests and approved-but-unexecuted calls
    /// expire; other states do not.
    pub fn expires_ms(&self) -> Option<u64> {
        match (self.state, self.expiry) {
            (_, Expiry::Never) => None,
            (State::Pending, _) => Some(
                self.created_ms
                    .saturating_add(self.requirement.ttl_secs.saturating_mul(1000)),
            ),
            (State::Approved, Expiry::PendingAndApproved) => Some(
                self.approved_ms
                    .unwrap_or(self.created_ms)
                    .saturating_add(self.requirement.approved_ttl_secs.saturating_mul(1000)),
            ),
            _ => None,
        }
    }

    /// Applies expiry at `now_ms`; returns whether the state changed.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        match self.expires_ms() {
            Some(at) if now_ms >= at => {
                self.state = State::Expired;
                true
            }
            _ => false,
        }
    }

    /// The required groups `reviewer` may review for, or why they may not review at all.
    pub fn eligible_groups(&self, reviewer: &Reviewer) -> Result<Vec<String>, ReviewError> {
        if self.requester.is(&reviewer.subject) {
            return Err(ReviewError::SelfReview);
        }
        if reviewer.delegated {
            return Err(ReviewError::Delegated);
        }
        let groups: Vec<String> = self
            .requirement
            .groups
            .keys()
            .filter(|g| reviewer.groups.iter().any(|m| m == *g))
            .cloned()
            .collect();
        if groups.is_empty() {
            return Err(ReviewError::NotEligible);
        }
        Ok(groups)
    }

    /// Whether `subject` has reviewed already.
    pub fn has_reviewed(&self, subject: &str) -> bool {
        self.reviews.iter().any(|r| r.reviewer == subject)
    }

    /// Counted approvals per required group.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        let mut c: BTreeMap<String, u32> = self
            .requirement
            .groups
            .keys()
            .map(|g| (g.clone(), 0))
            .collect();
        for r in &self.reviews {
            if r.counted
                && r.verdict == Verdict::Approve
                && let Some(n) = r.group.as_ref().and_then(|g| c.get_mut(g))
            {
                *n += 1;
            }
        }
        c
    }

    /// Whether every required group has enough counted approvals.
    pub fn satisfied(&self) -> bool {
        let counts = self.counts();
        self.requirement
            .groups
            .iter()
            .all(|(g, n)| counts.get(g).copied().unwrap_or(0) >= *n)
    }

    /// Records `reviewer`'s verdict at `now_ms`. `group` chooses which group an approval counts
    /// for. Returns the recorded review; an error changes nothing.
    pub fn review(
        &mut self,
        reviewer: &Reviewer,
        verdict: Verdict,
        group: Option<&str>,
        comment: Option<String>,
        now_ms: u64,
    ) -> Result<ReviewRecord, ReviewError> {
        let eligible = self.eligible_groups(reviewer)?;
        if self.has_reviewed(&reviewer.subject) {
            return Err(ReviewError::AlreadyReviewed);
        }
        if let Some(g) = group
            && !eligible.iter().any(|e| e == g)
        {
            return Err(ReviewError::GroupNotEligible(g.to_string()));
        }
        self.expire(now_ms);
        let counted = self.state.is_open();
        let group = match verdict {
            Verdict::Deny => None,
            Verdict::Approve => Some(match group {
                Some(g) => g.to_string(),
                None => {
                    // The group that still needs the most approvers; ties go alphabetically.
                    let counts = self.counts();
                    let need = |g: &String| {
                        let n = self.requirement.groups[g];
                        n.saturating_sub(counts.get(g).copied().unwrap_or(0))
                    };
                    let mut best = eligible[0].clone();
                    for g in &eligible[1..] {
                        if need(g) > need(&best) {
                            best = g.clone();
                        }
                    }
                    best
                }
            }),
        };
        let record = ReviewRecord {
            reviewer: reviewer.subject.clone(),
            verdict,
            group,
            counted,
            comment,
            time_ms: now_ms,
        };
        self.reviews.push(record.clone());
        if counted {
            match verdict {
                Verdict::Deny => self.state = State::Denied,
                Verdict::Approve if self.satisfied() => {
                    self.state = State::Approved;
                    self.approved_ms = Some(now_ms);
                }
                Verdict::Approve => {}
            }
        }
        Ok(record)
    }

    /// The requester withdraws a pending or approved (not yet executing) call.
    pub fn cancel(&mut self, by: &str, now_ms: u64) -> Result<(), TransitionError> {
        if !self.requester.is(by) {
            return Err(TransitionError::NotRequester);
        }
        self.expire(now_ms);
        match self.state {
            State::Pending | State::Approved => {
                self.state = State::Cancelled;
                Ok(())
            }
            s => Err(TransitionError::WrongState(s)),
        }
    }

    /// An eligible reviewer withdraws an approval before the call is executed.
    pub fn revoke(&mut self, reviewer: &Reviewer, now_ms: u64) -> Result<(), TransitionError> {
        self.eligible_groups(reviewer)?;
        self.expire(now_ms);
        match self.state {
            State::Approved => {
                self.state = State::Revoked;
                Ok(())
            }
            s => Err(TransitionError::WrongState(s)),
        }
    }

    /// Claims the call for execution. Exactly one claim succeeds.
    pub fn begin_execution(&mut self, now_ms: u64) -> Result<(), TransitionError> {
        self.expire(now_ms);
        match self.state {
            State::Approved => {
                self.state = State::Executing;
                Ok(())
            }
            s => Err(TransitionError::WrongState(s)),
        }
    }

    /// Gives an execution back before anything was sent (the audit log could not record the
    /// forward): approved again, to run when it can, within its approval's time.
    pub fn release(&mut self) -> Result<(), TransitionError> {
        match self.state {
            State::Executing => {
                self.state = State::Approved;
                Ok(())
            }
            s => Err(TransitionError::WrongState(s)),
        }
    }

    /// Records how the execution ended.
    pub fn finish(&mut self, succeeded: bool) -> Result<(), TransitionError> {
        match self.state {
            State::Executing => {
                self.state = if succeeded {
                    State::Succeeded
                } else {
                    State::Failed
                };
                Ok(())
            }
            s => Err(TransitionError::WrongState(s)),
        }
    }

    /// After a restart, a call found executing may or may not have run: it becomes `unknown`,
    /// or — when the function is declared idempotent — approved again at `now_ms`, to be run
    /// once more.
    pub fn recover(&mut self, idempotent: bool, now_ms: u64) -> bool {
        if self.state != State::Executing {
            return false;
        }
        if idempotent {
            self.state = State::Approved;
            self.approved_ms = Some(now_ms);
        } else {
            self.state = State::Unknown;
        }
        true
    }
}
