//! A client that talks but never reads, for the isolation tests: its Ogg Opus voice and a
//! WebSocket whose kernel buffers are kept small.

use super::voice;
use std::net::TcpStream;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// `seconds` of [`voice`] as an Ogg Opus stream (24 kHz mono, 20 ms packets, a page each),
/// what a client sends after kind 1.
pub fn ogg_opus_voice(seconds: f32) -> Vec<u8> {
    use ogg::writing::{PacketWriteEndInfo as End, PacketWriter};
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 1]);
    head.extend_from_slice(&312u16.to_le_bytes());
    head.extend_from_slice(&24_000u32.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]);
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&4u32.to_le_bytes());
    tags.extend_from_slice(b"test");
    tags.extend_from_slice(&0u32.to_le_bytes());
    let mut enc =
        opus::Encoder::new(24_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let mut buf = Vec::new();
    let mut w = PacketWriter::new(&mut buf);
    w.write_packet(head, 7, End::EndPage, 0).unwrap();
    w.write_packet(tags, 7, End::EndPage, 0).unwrap();
    let pcm = voice(seconds);
    for (i, chunk) in pcm.chunks_exact(480).enumerate() {
        let packet = enc.encode_vec(chunk, 4000).unwrap();
        let granule = 312 + 960 * (i as u64 + 1); // 48 kHz units
        w.write_packet(packet, 7, End::EndPage, granule).unwrap();
    }
    drop(w);
    buf
}

/// A WebSocket to 127.0.0.1:`port` that holds the server's kernel buffers for it small: its
/// receive buffer takes almost nothing in, and the MSS it announces (536) makes the server's
/// send buffer small too (Linux sizes it from the peer's MSS: about 2.6 MB for loopback's
/// 64 kB MSS, which absorbed ~750 of Moshi's frames, about 45 kB for 536). A client that
/// never reads thus blocks the server's socket after a few dozen frames, on any machine.
pub fn ws_with_tiny_buffers(port: u16) -> tungstenite::WebSocket<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let set = |fd, level, name, value: libc::c_int| {
        let p = &value as *const libc::c_int as *const libc::c_void;
        let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = unsafe { libc::setsockopt(fd, level, name, p, n) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    };
    let tcp = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        TcpStream::from_raw_fd(fd)
    };
    set(tcp.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 2048);
    set(tcp.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_MAXSEG, 536);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let rc = unsafe {
        libc::connect(
            tcp.as_raw_fd(),
            &sin as *const _ as *const libc::sockaddr,
            len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // Sending stops (instead of hanging the test) if the server stops reading.
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!("ws://127.0.0.1:{port}/api/chat");
    tungstenite::client(url, tcp).expect("upgrade").0
}
