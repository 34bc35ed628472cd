//! The relay's UDP socket, set up as an operator would: large kernel buffers (QUIC bursts a
//! whole congestion window at a time; the default ~200 KiB drops packets under load), with a
//! warning that names the sysctl when the kernel caps them, and a note of whether the kernel
//! offers segmentation offload (GSO) and receive coalescing (GRO), which quinn uses where it
//! finds them.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, UdpSocket};

/// What the socket ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpInfo {
    /// Receive buffer the kernel granted, bytes.
    pub recv_buffer: usize,
    /// Send buffer the kernel granted, bytes.
    pub send_buffer: usize,
    /// Datagrams per send with GSO (1: none).
    pub gso_segments: usize,
    /// Datagrams per receive with GRO (1: none).
    pub gro_segments: usize,
}

/// Binds `addr` with `buffer` bytes requested for each kernel buffer (0 leaves the kernel's
/// defaults).
pub fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<(UdpSocket, UdpInfo)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too on a wildcard IPv6 address, as most operators expect.
        let _ = socket.set_only_v6(false);
    }
    if buffer > 0 {
        // Failure here is not fatal: the read-back below says what we got.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    socket.bind(&addr.into())?;
    let std: UdpSocket = socket.into();
    let s = socket2::SockRef::from(&std);
    // Linux reports twice the size it granted (it counts its bookkeeping); halve it to
    // compare with what was asked for.
    let granted = |reported: usize| {
        if cfg!(target_os = "linux") {
            reported / 2
        } else {
            reported
        }
    };
    let recv_buffer = granted(s.recv_buffer_size()?);
    let send_buffer = granted(s.send_buffer_size()?);
    let state = quinn::udp::UdpSocketState::new((&std).into())?;
    let info = UdpInfo {
        recv_buffer,
        send_buffer,
        gso_segments: state.max_gso_segments(),
        gro_segments: state.gro_segments(),
    };
    if buffer > 0 && (recv_buffer < buffer || send_buffer < buffer) {
        tracing::warn!(
            requested = buffer,
            recv_buffer,
            send_buffer,
            "the kernel capped the UDP socket buffers; raise net.core.rmem_max and \
             net.core.wmem_max (see deploy/sysctl.d) or packets drop under load"
        );
    }
    tracing::info!(
        recv_buffer,
        send_buffer,
        gso_segments = info.gso_segments,
        gro_segments = info.gro_segments,
        "UDP socket ready"
    );
    Ok((std, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_reports_its_buffers() {
        let (s, info) = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert!(s.local_addr().unwrap().port() != 0);
        assert!(info.recv_buffer > 0 && info.send_buffer > 0);
        assert!(info.gso_segments >= 1 && info.gro_segments >= 1);
    }
}
