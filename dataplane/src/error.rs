use std::path::PathBuf;

/// Everything the dataplane can fail at.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("netlink {op} failed")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink needs a tokio runtime and none is running")]
    NoRuntime,
    #[error("entering network namespace {path}")]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address")]
    NoIpv4(String),
    #[error("no default route; pass --iface or --public-ip")]
    NoDefaultRoute,
    #[error("{0}")]
    Conflict(String),
    #[error("nf_tables: {op} failed")]
    Nftables {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("this kernel has no {0} support")]
    Unsupported(&'static str),
    #[error("{0:?} is not an interface name or IPv4 address")]
    BadSelector(String),
    /// Input the kernel must never see: a bad name, MAC, VLAN id or mode.
    #[error("{0}")]
    Invalid(String),
    /// VLANs need 802.1Q or bridge VLAN filtering in the kernel; Open vSwitch
    /// tags in its own datapath and does without either.
    #[error(
        "this kernel has no {feature} support ({config}): use an Open vSwitch bridge for VLANs"
    )]
    NoVlanSupport {
        feature: &'static str,
        config: &'static str,
    },
    /// A step failed, and so did undoing what it had half-made.
    #[error("{failed}; undoing it also failed: {undo}")]
    UndoFailed {
        failed: Box<DataplaneError>,
        undo: Box<DataplaneError>,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Maps an rtnetlink failure to the crate's error, naming the operation.
pub(crate) fn netlink_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    move |source| DataplaneError::Netlink { op, source }
}
