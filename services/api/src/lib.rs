//! orrery-api: the REST contract on :8080.

pub mod auth;
pub mod body;
pub mod db;
pub mod error;
pub mod input;
pub mod middleware;
pub mod models;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod state;
pub mod ui;
pub mod validation;

use orrery::runtime::{self, HealthPort};

pub fn main() -> i32 {
    runtime::main("orrery-api", HealthPort::None, |ctx| async move {
        let app = startup::Application::build(ctx)?;
        app.run_until_stopped().await
    })
}
