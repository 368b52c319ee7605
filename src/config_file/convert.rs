//! Tomcat `server.xml` `<Cluster>` → TOML converter.

use super::ConfigFileError;

/// The TOML equivalent of a `server.xml` cluster, and what could not be carried over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// A configuration file `NodeConfig::from_toml_str` loads; what was not carried over is
    /// listed in it as comments.
    pub toml: String,
    /// Each element or attribute not carried over, with why.
    pub not_carried: Vec<String>,
}

/// Converts the first `<Cluster>` element of a `server.xml` (and its `<Engine jvmRoute>` and
/// HTTP `<Connector>`).
pub fn convert_server_xml(_xml: &str) -> Result<Conversion, ConfigFileError> {
    Err(ConfigFileError {
        file: None,
        key: String::new(),
        line: None,
        kind: super::ConfigFileErrorKind::Unsupported,
        message: "the server.xml converter is not written yet".into(),
    })
}
