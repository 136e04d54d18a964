//! The task lifecycle as one state machine (DESIGN decision 5): which action moves a task from which status to
//! which, and what the move does to the task's pending work. The API's pause/resume/cancel and the scheduler's
//! completion both ask it; neither compares status strings of its own.
//!
//! ```text
//!   active ──pause──▶ paused ──resume──▶ active
//!   active|paused ──cancel──▶ canceled           (terminal)
//!   active ──complete (scheduler: no future fires, no pending work)──▶ completed   (terminal)
//! ```
//! Repeating the current status is a no-op (`Outcome::Unchanged`); any other move is refused.

use crate::model::TaskStatus;

/// Something that changes a task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
    /// The scheduler's: an exhausted schedule whose last work has settled.
    Complete,
}

/// What a transition does to the task's due work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingWork {
    /// Nothing is removed.
    Keep,
    /// Every unleased due_work row of the task goes (scheduled, overdue, waiting for retry, manual); a run
    /// already leased finishes.
    RemoveUnleased,
    /// The materialization cursor moves to now: fires missed while paused are not replayed (no backlog burst).
    RestartFromNow,
}

/// The answer of the state machine for one action on one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task is already in the action's target status: answer 200 unchanged, write nothing.
    Unchanged,
    /// Move to `to`, doing `work` to the pending work.
    Move { to: TaskStatus, work: PendingWork },
}

/// An action the task's current status does not allow (409 at the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a task that is {}", action.verb(), from)]
pub struct Refused {
    pub action: Action,
    pub from: TaskStatus,
}

impl Action {
    /// The status the action leads to.
    pub fn target(self) -> TaskStatus {
        match self {
            Action::Pause => TaskStatus::Paused,
            Action::Resume => TaskStatus::Active,
            Action::Cancel => TaskStatus::Canceled,
            Action::Complete => TaskStatus::Completed,
        }
    }

    /// The statuses the action may leave (besides its own target, which is a no-op).
    pub fn sources(self) -> &'static [TaskStatus] {
        match self {
            Action::Pause => &[TaskStatus::Active],
            Action::Resume => &[TaskStatus::Paused],
            Action::Cancel => &[TaskStatus::Active, TaskStatus::Paused],
            Action::Complete => &[TaskStatus::Active],
        }
    }

    /// What the move does to pending work.
    pub fn work(self) -> PendingWork {
        match self {
            Action::Pause | Action::Cancel => PendingWork::RemoveUnleased,
            Action::Resume => PendingWork::RestartFromNow,
            // Completion happens only once no work is pending.
            Action::Complete => PendingWork::Keep,
        }
    }

    /// The verb used in messages and in the audit log (`task.<verb>`).
    pub fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Complete => "complete",
        }
    }

    /// The audit log action of a move (`task.pause`, ..., `task.completed` for the scheduler's).
    pub fn audit_action(self) -> &'static str {
        match self {
            Action::Pause => "task.pause",
            Action::Resume => "task.resume",
            Action::Cancel => "task.cancel",
            Action::Complete => "task.completed",
        }
    }

    /// The past participle announced to listeners (`paused`, `resumed`, `canceled`, `completed`).
    pub fn done(self) -> &'static str {
        match self {
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Cancel => "canceled",
            Action::Complete => "completed",
        }
    }

    /// The state machine: what `self` does to a task that is `from`.
    pub fn apply(self, from: TaskStatus) -> Result<Outcome, Refused> {
        if from == self.target() {
            return Ok(Outcome::Unchanged);
        }
        if self.sources().contains(&from) {
            Ok(Outcome::Move {
                to: self.target(),
                work: self.work(),
            })
        } else {
            Err(Refused { action: self, from })
        }
    }
}

impl TaskStatus {
    /// `canceled` and `completed` accept no action and no edit.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Canceled | TaskStatus::Completed)
    }

    /// Whether a run may be started or a fire snoozed by hand (only an active task's).
    pub fn accepts_manual_work(self) -> bool {
        self == TaskStatus::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn the_transitions_are_those_of_decision_5() {
        let table = [
            (Action::Pause, Active, Some(Paused)),
            (Action::Pause, Paused, None),
            (Action::Resume, Paused, Some(Active)),
            (Action::Resume, Active, None),
            (Action::Cancel, Active, Some(Canceled)),
            (Action::Cancel, Paused, Some(Canceled)),
            (Action::Cancel, Canceled, None),
            (Action::Complete, Active, Some(Completed)),
        ];
        for (action, from, to) in table {
            let got = action.apply(from).unwrap();
            match to {
                Some(to) => assert_eq!(
                    got,
                    Outcome::Move {
                        to,
                        work: action.work()
                    },
                    "{action:?} on {from}"
                ),
                None => assert_eq!(got, Outcome::Unchanged, "{action:?} on {from}"),
            }
        }
    }

    #[test]
    fn terminal_statuses_refuse_every_other_action() {
        for from in [Canceled, Completed] {
            assert!(from.is_terminal());
            for action in [
                Action::Pause,
                Action::Resume,
                Action::Cancel,
                Action::Complete,
            ] {
                if action.target() != from {
                    assert_eq!(action.apply(from), Err(Refused { action, from }));
                }
            }
        }
        assert_eq!(
            Refused {
                action: Action::Resume,
                from: Completed
            }
            .to_string(),
            "cannot resume a task that is completed"
        );
    }

    #[test]
    fn pause_and_cancel_remove_unleased_work_and_resume_restarts_from_now() {
        assert_eq!(Action::Pause.work(), PendingWork::RemoveUnleased);
        assert_eq!(Action::Cancel.work(), PendingWork::RemoveUnleased);
        assert_eq!(Action::Resume.work(), PendingWork::RestartFromNow);
        assert_eq!(Action::Resume.apply(Active), Ok(Outcome::Unchanged));
        assert!(Action::Resume.apply(Canceled).is_err());
        assert!(Action::Complete.apply(Paused).is_err());
    }
}
