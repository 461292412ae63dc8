//! Only the server shimmed: its peer is not shimmed, so it must fall back to
//! TCP (path=tcp reason=peer-not-shim), the data intact.
//!
//! Runs every scenario of `util/scenarios.rs` with the client plain and the
//! server shimmed.

#[macro_use]
mod util;

use util::Combo;
use util::Side::{Plain, Shim};

combination_tests! {
    Combo { client: Plain, server: Shim };
    plainclient_shimserver_stream_1gib => stream_1gib,
    plainclient_shimserver_stream_ipv6 => stream_ipv6,
    plainclient_shimserver_stream_prefork_server => stream_prefork_server,
    plainclient_shimserver_stream_forkconn_server => stream_forkconn_server,
    plainclient_shimserver_stream_8_threads_x_8_conns => stream_8_threads_x_8_conns,
    plainclient_shimserver_stream_many_small_conns => stream_many_small_conns,
    plainclient_shimserver_rust_client_c_server => rust_client_c_server,
    plainclient_shimserver_c_client_rust_server => c_client_rust_server,
    plainclient_shimserver_kill_server_while_client_reads => kill_server_while_client_reads,
    plainclient_shimserver_kill_server_while_client_writes => kill_server_while_client_writes,
    plainclient_shimserver_kill_client_while_server_reads => kill_client_while_server_reads,
    plainclient_shimserver_kill_client_while_server_writes => kill_client_while_server_writes,
    plainclient_shimserver_threads_share_one_socket => threads_share_one_socket,
    plainclient_shimserver_socat_file_transfer => socat_file_transfer,
    plainclient_shimserver_iperf3_file_transfer => iperf3_file_transfer,
}
