//! Local infrastructure: the Berlin Group sandbox bank and the provisioning of local AWS
//! resources straight from template.yaml.

pub mod provision;
pub mod sandbox;
pub mod template;
