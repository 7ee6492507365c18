//! Core crate of the open-banking bundle.
//!
//! Layers (see docs/architecture.md):
//! - [`domain`]: pure types and rules (money, IBAN, ids, consent state machine, payment status);
//! - [`fx`]: the `RateSource` port for exchange rates and its cached ECB adapter;
//! - [`bank`]: the `BankApi` port, the bank registry and the Berlin Group 1.3 connector;
//! - [`store`]: consent and payment stores (DynamoDB adapters);
//! - [`queue`]: the queue port and its SQS adapter;
//! - [`aws`]: AWS SDK configuration, from the standard environment only;
//! - [`telemetry`]: structured JSON logs;
//! - [`http`]: API Gateway request/response helpers (caller identity, problem+json);
//! - [`sca_state`]: the signed, expiring, single-use `state` of SCA redirects;
//! - [`services`]: the use cases (bank connections, ...), over the ports above;
//! - [`webhook`]: the notifier (inbox + webhook queue) and the webhook signature.

pub mod aws;
pub mod bank;
pub mod chaos;
pub mod domain;
pub mod fx;
pub mod http;
pub mod queue;
pub mod sca_state;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod webhook;
