pub mod breaker;
pub mod config;
pub mod schedule;
