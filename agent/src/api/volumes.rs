//! The API's volume messages: a container's mounts and `tartan volume`'s volumes.

use tartan_proto::v1::{Volume as PbVolume, VolumeMount as PbVolumeMount};
use tartan_runtime::volumes::{Mount, MountKind};

use crate::containers::volumes::VolumeView;

pub fn to_pb_mount(mount: &Mount) -> PbVolumeMount {
    PbVolumeMount {
        r#type: match mount.kind {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
        }
        .to_string(),
        name: mount.name.clone(),
        source: mount.source.display().to_string(),
        destination: mount.destination.display().to_string(),
        rw: !mount.read_only,
    }
}

pub fn to_pb_volume(view: VolumeView) -> PbVolume {
    PbVolume {
        name: view.name,
        mountpoint: view.mountpoint.display().to_string(),
        created: view.created,
        anonymous: view.anonymous,
        used_by: view.used_by,
    }
}
