//! The bottom layer: how a task touches the machine. Every process starts through one door
//! ([`plan::Step`]), the docker CLI is made in one place ([`docker`]), Ctrl-C and other signals
//! set one flag ([`interrupt`]), output goes through `say!` and `out!` ([`term`]) with progress
//! bars ([`progress`]), what a run creates carries its label ([`label`]), files kept under
//! `target/` are replaced whole ([`atomic`]), and parts of the working tree have content
//! fingerprints ([`tree`]).

#[macro_use]
pub mod term;

pub mod atomic;
pub mod docker;
pub mod interrupt;
pub mod label;
pub mod plan;
pub mod progress;
pub mod tree;
