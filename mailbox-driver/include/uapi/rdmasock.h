/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR MIT */
/*
 * rdmasock.h - user API of the librdmasock kernel mailbox driver (/dev/rdmasock)
 *
 * Every open file of /dev/rdmasock is an endpoint. An endpoint has a mailbox (a
 * bounded queue of struct rdmasock_msg), up to RDMASOCK_MAX_REGIONS registered
 * memory regions, and at most one peer endpoint. Two endpoints become peers through
 * a rendezvous the kernel verifies against a real TCP connection: the client names
 * its TCP socket (RDMASOCK_IOC_OFFER), the server names its accepted socket
 * (RDMASOCK_IOC_ACCEPT), and the driver pairs them when the two sockets are the two
 * ends of one connection (same network namespace, mirrored 4-tuple).
 *
 * Once connected, RDMASOCK_IOC_WRITE copies bytes from the caller's memory into a
 * region the peer registered ("RDMA write") and posts a RDMASOCK_MSG_WRITE completion
 * into the peer's mailbox. No page is ever shared between the two processes.
 *
 * read(2) returns whole messages (a multiple of sizeof(struct rdmasock_msg); blocks
 * unless O_NONBLOCK; 0 at end: the peer is gone, or the offer was refused, and the
 * mailbox is empty). poll(2): EPOLLIN while mail is queued, EPOLLOUT while connected
 * and the peer's mailbox has room, EPOLLHUP once the peer is gone.
 *
 * With RDMASOCK_EPF_DOORBELL set (RDMASOCK_IOC_SET_FLAGS), read(2) does not consume
 * mail: it returns one byte (1) while mail is queued or a doorbell token is pending
 * (the token is consumed), blocks otherwise, and returns 0 once the peer is gone and
 * the mailbox is empty: the semantics of a pipe used as a doorbell. Mail is then
 * taken with RDMASOCK_IOC_RECV.
 *
 * All structures have fixed-width fields, explicit padding, and 64-bit fields at
 * 8-byte offsets, so 32-bit and 64-bit callers see one layout.
 */
#ifndef _UAPI_LINUX_RDMASOCK_H
#define _UAPI_LINUX_RDMASOCK_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define RDMASOCK_DEVICE_NAME	"rdmasock"
#define RDMASOCK_ABI_VERSION	2
#define RDMASOCK_MAX_REGIONS	4

/* Endpoint states (struct rdmasock_recv.state, struct rdmasock_info.state). */
#define RDMASOCK_STATE_IDLE		0	/* new, or offer withdrawn */
#define RDMASOCK_STATE_OFFERED		1	/* offer pending */
#define RDMASOCK_STATE_CONNECTED	2	/* paired with a peer */
#define RDMASOCK_STATE_REFUSED		3	/* offer refused (final) */
#define RDMASOCK_STATE_CLOSED		4	/* the peer is gone (final) */

/* Message types (struct rdmasock_msg.type). */
#define RDMASOCK_MSG_ACCEPTED	1	/* our offer was accepted: connected */
#define RDMASOCK_MSG_REFUSED	2	/* our offer was refused; info: errno (>0) or 0 */
#define RDMASOCK_MSG_WRITE	3	/* the peer wrote into our region info, at
					 * [offset, offset + len); imm: the peer's value
					 */
#define RDMASOCK_MSG_NOTIFY	4	/* the peer's notification; info: its tag,
					 * imm: its value
					 */
#define RDMASOCK_MSG_REGION	5	/* the peer (un)registered region info; len: its
					 * length (0: unregistered)
					 */
#define RDMASOCK_MSG_CLOSE	6	/* the peer is gone; info: RDMASOCK_CLOSE_* */

/* Message flags (struct rdmasock_msg.flags). */
#define RDMASOCK_MSGF_COALESCE	0x1	/* the poster allowed merging */
#define RDMASOCK_MSGF_MERGED	0x2	/* this message stands for several */
#define RDMASOCK_MSGF_REPLACE	0x4	/* a later notify with this tag replaced imm */
#define RDMASOCK_MSGF_VALUE	0x8	/* CLOSE: imm is the peer's close value */

/* Why a peer is gone (RDMASOCK_MSG_CLOSE info). */
#define RDMASOCK_CLOSE_RELEASED	1	/* its file was released (close or death) */

/**
 * struct rdmasock_msg - one mailbox message (32 bytes)
 * @type: RDMASOCK_MSG_*
 * @flags: RDMASOCK_MSGF_*
 * @info: region id (WRITE, REGION), tag (NOTIFY), errno (REFUSED), reason (CLOSE)
 * @offset: WRITE: offset of the first byte written in the region
 * @len: WRITE: bytes written (the sum, if merged); REGION: region length
 * @imm: WRITE, NOTIFY: the value the peer passed (the latest, if merged); CLOSE
 *       with RDMASOCK_MSGF_VALUE: the peer's close value (see RDMASOCK_REG_CLOSE_VALUE)
 */
struct rdmasock_msg {
	__u16 type;
	__u16 flags;
	__u32 info;
	__u64 offset;
	__u64 len;
	__u64 imm;
};

/*
 * Region flag: a close value. The peer may not write this region (and INFO shows it
 * with length 0). When the endpoint is released (close, exec, death), the driver reads
 * the __u64 at the start of the region and hands it to the peer as the imm of its
 * RDMASOCK_MSG_CLOSE (flag RDMASOCK_MSGF_VALUE): the last value the process stored
 * there, e.g. how much of the peer's data it had consumed. At least 8 bytes, 8-byte
 * aligned; the lowest such region counts.
 */
#define RDMASOCK_REG_CLOSE_VALUE	0x1

/**
 * struct rdmasock_reg - RDMASOCK_IOC_REG: register a region the peer may write
 * @addr: start of the caller's buffer (any alignment); must be writable
 * @len: its length, 1 .. the module's max_region_bytes
 * @flags: RDMASOCK_REG_*
 * @id: out: the region id (0 .. RDMASOCK_MAX_REGIONS - 1)
 *
 * The pages are pinned until RDMASOCK_IOC_UNREG or release, and counted against
 * RLIMIT_MEMLOCK when the module parameter account_memlock is set.
 */
struct rdmasock_reg {
	__u64 addr;
	__u64 len;
	__u32 flags;
	__u32 id;
};

/**
 * struct rdmasock_offer - RDMASOCK_IOC_OFFER: offer the caller's TCP socket
 * @sock_fd: a TCP socket (AF_INET or AF_INET6) of the caller, connected or not yet
 * @flags: must be 0
 * @sock_ino: out: the socket's inode number
 *
 * The socket's addresses are read by the driver when a server accepts, so the offer
 * may be made before connect(2).
 */
struct rdmasock_offer {
	__s32 sock_fd;
	__u32 flags;
	__u64 sock_ino;
};

#define RDMASOCK_ACCEPT_REFUSE	0x1	/* refuse the matching offer instead */

/**
 * struct rdmasock_accept - RDMASOCK_IOC_ACCEPT: take the offer of our TCP peer
 * @sock_fd: the caller's connected TCP socket (normally the one accept(2) returned)
 * @flags: RDMASOCK_ACCEPT_*
 * @peer_ino: 0, or the inode number the offered socket must have
 * @peer_uid: out: the offering endpoint's effective uid (in the caller's user ns)
 * @peer_pid: out: the offering process (in the caller's pid ns; 0 if not visible)
 */
struct rdmasock_accept {
	__s32 sock_fd;
	__u32 flags;
	__u64 peer_ino;
	__u32 peer_uid;
	__u32 peer_pid;
};

#define RDMASOCK_WRITE_COALESCE	0x1	/* may merge with the previous completion */

/**
 * struct rdmasock_write - RDMASOCK_IOC_WRITE: copy into the peer's region
 * @addr: the caller's source buffer
 * @len: bytes to copy (0 posts a completion only)
 * @offset: where in the peer's region; offset + len must not pass its end
 * @imm: a value delivered in the completion
 * @region: the peer's region id
 * @flags: RDMASOCK_WRITE_*
 *
 * The completion is merged into the last queued message when both allowed it, it
 * is a completion for the same region and the new bytes follow its bytes.
 */
struct rdmasock_write {
	__u64 addr;
	__u64 len;
	__u64 offset;
	__u64 imm;
	__u32 region;
	__u32 flags;
};

#define RDMASOCK_NOTIFY_REPLACE	0x1	/* update a queued notify with the same tag */

/**
 * struct rdmasock_notify - RDMASOCK_IOC_NOTIFY: post a message to the peer
 * @imm: the value
 * @tag: the caller's tag (opaque to the driver)
 * @flags: RDMASOCK_NOTIFY_*
 */
struct rdmasock_notify {
	__u64 imm;
	__u32 tag;
	__u32 flags;
};

/**
 * struct rdmasock_recv - RDMASOCK_IOC_RECV: take mail without blocking
 * @msgs: an array of @max struct rdmasock_msg
 * @max: its capacity (0: only report the state)
 * @count: out: messages copied
 * @state: out: RDMASOCK_STATE_*
 * @pending: out: messages still queued
 * @peer_cpu: out: the CPU the peer last entered the driver on (~0: none)
 * @peer_sleeping: out: the peer's tasks blocked in read(2) on its endpoint
 * @reserved: out: 0
 * @pad: out: 0
 */
struct rdmasock_recv {
	__u64 msgs;
	__u32 max;
	__u32 count;
	__u32 state;
	__u32 pending;
	__u32 peer_cpu;
	__u32 peer_sleeping;
	__u32 reserved;
	__u32 pad;
};

/**
 * struct rdmasock_info - RDMASOCK_IOC_INFO: the endpoint and its peer
 * @state: RDMASOCK_STATE_*
 * @flags: RDMASOCK_EPF_*
 * @peer_uid: the peer's effective uid (caller's user ns), or ~0 without a peer
 * @peer_pid: the peer's process (caller's pid ns), or 0
 * @peer_region_len: length of each peer region (0: not registered)
 * @mbox_depth: messages a mailbox holds
 * @pad: 0
 */
struct rdmasock_info {
	__u32 state;
	__u32 flags;
	__u32 peer_uid;
	__u32 peer_pid;
	__u64 peer_region_len[RDMASOCK_MAX_REGIONS];
	__u32 mbox_depth;
	__u32 pad;
};

/**
 * struct rdmasock_listen - RDMASOCK_IOC_LISTEN: say that a listening socket is served
 * @sock_fd: a listening TCP socket (AF_INET or AF_INET6) of the caller
 * @flags: must be 0
 *
 * The endpoint becomes a *listener endpoint*: while its file is open and the socket
 * listens, RDMASOCK_IOC_FIND by a process of any uid in the socket's network
 * namespace finds it. It takes no offer and accepts none (EBUSY).
 */
struct rdmasock_listen {
	__s32 sock_fd;
	__u32 flags;
};

/**
 * struct rdmasock_find - RDMASOCK_IOC_FIND: is this destination served?
 * @addr: the destination address (IPv4 as IPv4-mapped IPv6)
 * @port: the destination port, host order
 * @pad: 0
 * @flags: must be 0
 * @uid: out: the listener endpoint's effective uid (caller's user ns)
 * @pid: out: its process (caller's pid ns; 0 if not visible)
 *
 * Finds a listener endpoint, in the caller's network namespace, whose socket still
 * listens on @port at @addr or at a wildcard that takes @addr (an IPv6 wildcard
 * with IPV6_V6ONLY takes no IPv4 address; an IPv4 one takes only IPv4). Whether
 * @addr is an address of this host is the caller's to know. ENOENT: none.
 */
struct rdmasock_find {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
	__u32 flags;
	__u32 uid;
	__u32 pid;
};

/* Endpoint flags (RDMASOCK_IOC_SET_FLAGS). */
#define RDMASOCK_EPF_DOORBELL	0x1	/* read(2) is a doorbell; mail via RECV */

#define RDMASOCK_IOC_MAGIC	0xDA

#define RDMASOCK_IOC_VERSION	_IOR(RDMASOCK_IOC_MAGIC, 0, __u32)
#define RDMASOCK_IOC_SET_FLAGS	_IOW(RDMASOCK_IOC_MAGIC, 1, __u32)
#define RDMASOCK_IOC_REG	_IOWR(RDMASOCK_IOC_MAGIC, 2, struct rdmasock_reg)
#define RDMASOCK_IOC_UNREG	_IOW(RDMASOCK_IOC_MAGIC, 3, __u32)
#define RDMASOCK_IOC_OFFER	_IOWR(RDMASOCK_IOC_MAGIC, 4, struct rdmasock_offer)
#define RDMASOCK_IOC_ACCEPT	_IOWR(RDMASOCK_IOC_MAGIC, 5, struct rdmasock_accept)
#define RDMASOCK_IOC_WITHDRAW	_IO(RDMASOCK_IOC_MAGIC, 6)
#define RDMASOCK_IOC_WRITE	_IOW(RDMASOCK_IOC_MAGIC, 7, struct rdmasock_write)
#define RDMASOCK_IOC_NOTIFY	_IOW(RDMASOCK_IOC_MAGIC, 8, struct rdmasock_notify)
#define RDMASOCK_IOC_RECV	_IOWR(RDMASOCK_IOC_MAGIC, 9, struct rdmasock_recv)
#define RDMASOCK_IOC_INFO	_IOR(RDMASOCK_IOC_MAGIC, 10, struct rdmasock_info)
#define RDMASOCK_IOC_RING_SELF	_IO(RDMASOCK_IOC_MAGIC, 11)
#define RDMASOCK_IOC_LISTEN	_IOW(RDMASOCK_IOC_MAGIC, 12, struct rdmasock_listen)
#define RDMASOCK_IOC_FIND	_IOWR(RDMASOCK_IOC_MAGIC, 13, struct rdmasock_find)

/*
 * Errors, besides the usual EFAULT/EINVAL/ENOMEM:
 * OFFER: EBADF, ENOTSOCK, EPROTONOSUPPORT (not TCP over IPv4/IPv6), EBUSY (the
 *   endpoint is not idle, or is a listener endpoint).
 * ACCEPT: ENOTCONN (the socket is not connected), EBUSY (not idle, or a listener), ENOENT (no
 *   matching offer), EPERM (same_uid_only and the uids differ: the offer is refused).
 * WITHDRAW: 0 (withdrawn, or nothing offered), EISCONN (accepted first),
 *   ECONNREFUSED (refused first).
 * WRITE, NOTIFY: ENOTCONN (no peer yet), EPIPE (the peer is gone), ENOENT (no such
 *   peer region), ERANGE (outside the region), EACCES (a close-value region),
 *   EAGAIN (the peer's mailbox is full; a doorbell token is posted to the caller
 *   once it drains).
 * REG: ENOSPC (all region slots used), EINVAL (bad length or flags), and the pinning
 *   and RLIMIT_MEMLOCK errors (ENOMEM, EFAULT).
 * UNREG: ENOENT.
 * LISTEN: EBADF, ENOTSOCK, EPROTONOSUPPORT, EINVAL (the socket does not listen),
 *   EBUSY (the endpoint is not idle, or listens already).
 * FIND: ENOENT (no listener endpoint takes that destination).
 */

#endif /* _UAPI_LINUX_RDMASOCK_H */
