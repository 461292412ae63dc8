//! Neither side shimmed: the kernel's TCP as the reference, which validates the
//! programs and the checks themselves.
//!
//! Runs every scenario of `util/scenarios.rs` with the client plain and the
//! server plain.

#[macro_use]
mod util;

use util::Combo;
use util::Side::Plain;

combination_tests! {
    Combo { client: Plain, server: Plain };
    plain_plain_stream_1gib => stream_1gib,
    plain_plain_stream_ipv6 => stream_ipv6,
    plain_plain_stream_prefork_server => stream_prefork_server,
    plain_plain_stream_forkconn_server => stream_forkconn_server,
    plain_plain_stream_8_threads_x_8_conns => stream_8_threads_x_8_conns,
    plain_plain_stream_many_small_conns => stream_many_small_conns,
    plain_plain_rust_client_c_server => rust_client_c_server,
    plain_plain_c_client_rust_server => c_client_rust_server,
    plain_plain_kill_server_while_client_reads => kill_server_while_client_reads,
    plain_plain_kill_server_while_client_writes => kill_server_while_client_writes,
    plain_plain_kill_client_while_server_reads => kill_client_while_server_reads,
    plain_plain_kill_client_while_server_writes => kill_client_while_server_writes,
    plain_plain_threads_share_one_socket => threads_share_one_socket,
    plain_plain_socat_file_transfer => socat_file_transfer,
    plain_plain_iperf3_file_transfer => iperf3_file_transfer,
}
