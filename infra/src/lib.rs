//! Local infrastructure: the Berlin Group sandbox bank and the provisioning of local AWS
//! resources straight from template.yaml.

pub mod local_runtime;
pub mod provision;
pub mod sandbox;
pub mod template;
