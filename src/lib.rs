pub mod breaker;
pub mod config;
pub mod health;
pub mod metrics;
pub mod probe;
pub mod schedule;
