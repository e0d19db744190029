//! Probes: what each resolver says (`dns`) and whether each MX address behaves like a mail
//! server a sender can hand mail to (`smtp`). `target` combines them into the health model's
//! [`TargetRound`](crate::health::TargetRound); `metrics` exports what the rounds measured.
//! Resolvers are asked within their query budgets (`budget`), and a host's good answer is
//! reused between asks (`reuse`).

pub mod budget;
pub mod dns;
pub mod metrics;
pub mod reuse;
pub mod smtp;
pub mod target;
pub mod tls;
