//! Everything we know of OCI images and registries, in one package: refs, manifests and
//! indexes, the OCI archive and layout readers, logins, the registry client with its retries, and the
//! operations a release needs. Other modules ask it typed questions; no registry JSON is read
//! outside it.

mod archive;
mod auth;
mod client;
mod inspect;
mod layout;
mod manifest;
mod model;
mod reference;
mod registry;
mod retry;
mod transport;

pub use archive::{Archive, PlatformImage, platform_images, platform_images_in};
pub use auth::docker_config_file;
#[cfg(test)]
pub use inspect::inspected_for_test;
pub use inspect::{FoundIndex, Inspected};
pub use layout::{LayoutDir, Loadable, tar_header};
pub use manifest::OCI_INDEX;
pub use model::{Descriptor, Document};
pub use reference::{full_name, repository_of};
pub use registry::{Registry, copy_request, push_request, read_request};
pub use retry::{Failure, retries};
