//! Backend API tests against real Postgres and Redis: one fresh database per test.

mod auth;
mod cli;
mod e2e;
mod files;
mod helpers;
mod keys;
mod oauth;
mod otel;
mod plans;
mod reports;
mod rls;
mod service;
mod users;
