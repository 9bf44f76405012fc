//! What each command does, one module per command or group of commands: `dev` and `test`
//! ([`dev`]), `prod` ([`prod`]), `db` ([`db`]), `release` ([`release`]), `ci` ([`ci`]),
//! `doctor` ([`doctor`]), `reap` ([`reap`]), `bench` ([`bench`]) and `fault-proxy` ([`faults`]),
//! which test tiers `test --changed` may skip ([`changed`]), the throwaway registry the tests
//! and benchmarks push to ([`registry`]) and the linters
//! `ci` runs ([`tools`]). Tasks use the layers below and never each other, but for `prod`,
//! which shares `dev`'s stack helpers, and `bench` and `ci`, which drive the others.

pub mod bench;
pub mod changed;
pub mod ci;
pub mod db;
pub mod dev;
pub mod doctor;
pub mod faults;
pub mod prod;
pub mod reap;
pub mod registry;
pub mod release;
pub mod tools;
