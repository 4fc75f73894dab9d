//! The HTTP transport over the service core: the axum router, handlers, the JSON error contract
//! (one mapping from service errors to status codes), the OpenAPI document, the connection layer
//! (bounded connections, header timeouts, a probe listener of its own) and assembling and running
//! the server process.
//!
//! Layer rule: the top serving layer; it depends on `notellm-service` and the layers below it,
//! and nothing but the binary depends on it.

pub mod api;
pub mod connections;
mod h2_preface;
mod parse_errors;
pub mod server;
