//! Both sides shimmed: every connection must go over the fabric under test
//! (path=shm; `RDMASOCK_CONFORMANCE_FABRIC=kmod` in the VM: path=kmod) and behave
//! exactly as over TCP.
//!
//! Runs every scenario of `util/scenarios.rs` with the client shimmed and the
//! server shimmed.

#[macro_use]
mod util;

use util::Combo;
use util::Side::Shim;

combination_tests! {
    Combo { client: Shim, server: Shim };
    shim_shim_stream_1gib => stream_1gib,
    shim_shim_stream_ipv6 => stream_ipv6,
    shim_shim_stream_prefork_server => stream_prefork_server,
    shim_shim_stream_forkconn_server => stream_forkconn_server,
    shim_shim_stream_8_threads_x_8_conns => stream_8_threads_x_8_conns,
    shim_shim_stream_many_small_conns => stream_many_small_conns,
    shim_shim_rust_client_c_server => rust_client_c_server,
    shim_shim_c_client_rust_server => c_client_rust_server,
    shim_shim_kill_server_while_client_reads => kill_server_while_client_reads,
    shim_shim_kill_server_while_client_writes => kill_server_while_client_writes,
    shim_shim_kill_client_while_server_reads => kill_client_while_server_reads,
    shim_shim_kill_client_while_server_writes => kill_client_while_server_writes,
    shim_shim_threads_share_one_socket => threads_share_one_socket,
    shim_shim_socat_file_transfer => socat_file_transfer,
    shim_shim_iperf3_file_transfer => iperf3_file_transfer,
}
