//! Everything we know of OCI images and registries, in one package: refs, manifests and
//! indexes, the OCI archive reader, logins, the registry client with its retries, and the
//! operations a release needs. Other modules ask it typed questions; no registry JSON is read
//! outside it.

mod archive;
mod auth;
mod client;
mod inspect;
mod manifest;
mod reference;
mod registry;
mod retry;
mod transport;

pub use archive::{PlatformImage, entries as archive_entries, platform_images};
pub use inspect::{FoundIndex, platform_image, read_index};
pub use manifest::{OCI_INDEX, platform_name};
pub use reference::full_name;
pub use registry::{Registry, copy_request, push_request, read_request};
pub use retry::{Failure, retries};
