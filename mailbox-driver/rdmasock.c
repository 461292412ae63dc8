// SPDX-License-Identifier: GPL-2.0
/*
 * rdmasock.c - the kernel mailbox driver of librdmasock (/dev/rdmasock)
 *
 * Copyright (c) the librdmasock authors
 */

/**
 * DOC: Overview
 *
 * Each open file of the misc device /dev/rdmasock is an *endpoint* (struct rs_ep).
 * An endpoint has a *mailbox*, a bounded queue of fixed-size messages
 * (struct rdmasock_msg) that read(2), RDMASOCK_IOC_RECV and poll(2) serve, and up
 * to RDMASOCK_MAX_REGIONS *regions*: user buffers whose pages the driver pinned
 * when they were registered.
 *
 * Two endpoints become *peers* through a rendezvous the driver checks against a
 * real TCP connection. The client offers its socket (RDMASOCK_IOC_OFFER); the
 * driver looks the fd up in the caller's own fd table (so the caller owns it) and
 * keeps a reference to the socket. The server names the socket accept(2) gave it
 * (RDMASOCK_IOC_ACCEPT); the driver reads both sockets' addresses itself and pairs
 * the endpoints when the sockets are the two ends of one connection: same network
 * namespace, and each one's local address and port are the other one's remote
 * address and port (IPv4 is compared as IPv4-mapped IPv6). With the module
 * parameter same_uid_only (default off), the two endpoints must also belong to the
 * same effective uid, or the offer is refused. Off by default: no page is shared,
 * a peer only ever writes into the ring the other one registered, through the
 * driver's checked copy, and learns no more of it than its uid and pid, what
 * SO_PEERCRED tells on a Unix socket; so two users' processes may pair.
 *
 * A listening process says which of its listening sockets a shim serves
 * (RDMASOCK_IOC_LISTEN, on an endpoint of its own that takes no offer): a client of
 * any uid asks (RDMASOCK_IOC_FIND) before it offers, so that it offers only where
 * an accept will look for the offer. The driver checks that the socket is the
 * caller's and listens; a listener endpoint counts only while its socket still
 * listens.
 *
 * Peers move bytes with RDMASOCK_IOC_WRITE: the driver copies from the writer's
 * buffer into the pages of a region the *reader* registered, at an offset and
 * length it checks against the registration, then posts a RDMASOCK_MSG_WRITE
 * completion into the reader's mailbox. The pages are reached through
 * kmap_local_page() and filled with copy_from_user(); no page is ever mapped into
 * the other process. RDMASOCK_IOC_NOTIFY posts a small message of the caller's own.
 *
 * When an endpoint's file is released (close(2) of the last reference, or the death
 * of its process), its offer is withdrawn, its peer is told (a RDMASOCK_MSG_CLOSE
 * message, state RDMASOCK_STATE_CLOSED, EPOLLHUP), and its pages are unpinned.
 *
 * Contexts, in the manner of the mailbox framework: every entry point (the file
 * operations, every ioctl) runs in process context and may sleep unless it says
 * otherwise. Messages are posted from process context only, under the receiving
 * mailbox's spinlock, so posting never sleeps.
 *
 * Locks, outermost first:
 *
 * - rs_mutex: the lists of pending offers and of listener endpoints; every change
 *   of an endpoint's state or peer pointer (offer, accept, withdraw, release).
 * - rs_ep.regions_rwsem: the endpoint's regions. Held for reading by a peer's
 *   writer for the whole copy; for writing while regions are (un)registered.
 * - rs_ep.lock (spinlock): state and peer pointer, so that a writer can take a
 *   reference to its peer without rs_mutex.
 * - rs_mbox.lock (spinlock): the mailbox, its reservations and the doorbell token.
 *
 * rs_mutex and regions_rwsem are never held together. rs_ep.lock is taken under
 * regions_rwsem (a writer checks that its peer is still its peer), and a mailbox
 * lock may be taken under any endpoint's lock (poll looks at its peer's mailbox).
 * Two rs_ep.lock are never held together.
 *
 * Lifetime: struct rs_ep is reference counted. The file holds one reference; each
 * of two peers holds one on the other while connected; a writer holds one on its
 * peer for the duration of one write.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/compat.h>
#include <linux/cred.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/log2.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/net.h>
#include <linux/nsproxy.h>
#include <linux/pid.h>
#include <linux/poll.h>
#include <linux/rwsem.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/uidgid.h>
#include <linux/wait.h>
#include <net/inet_sock.h>
#include <net/ipv6.h>
#include <net/net_namespace.h>
#include <net/sock.h>
#include <net/tcp_states.h>
#include <asm/ioctls.h>

#include "include/uapi/rdmasock.h"

static bool same_uid_only;
module_param(same_uid_only, bool, 0644);
MODULE_PARM_DESC(same_uid_only,
		 "Pair only endpoints of the same effective uid (default: 0)");

static unsigned int mbox_depth = 256;
module_param(mbox_depth, uint, 0444);
MODULE_PARM_DESC(mbox_depth,
		 "Messages per mailbox, rounded up to a power of two, 8..4096 (default: 256)");

static unsigned long max_region_bytes = 256UL << 20;
module_param(max_region_bytes, ulong, 0644);
MODULE_PARM_DESC(max_region_bytes, "Largest region one REG may pin (default: 256 MiB)");

static bool account_memlock = true;
module_param(account_memlock, bool, 0644);
MODULE_PARM_DESC(account_memlock,
		 "Count pinned pages against RLIMIT_MEMLOCK (default: 1)");

static atomic_t rs_live_eps = ATOMIC_INIT(0);
static atomic_long_t rs_pinned_pages = ATOMIC_LONG_INIT(0);

static DEFINE_MUTEX(rs_mutex);
static LIST_HEAD(rs_offers);
static LIST_HEAD(rs_listeners);

/* Messages one RECV or read(2) moves per lock hold (kept on the stack). */
#define RS_BATCH 16

/**
 * struct rs_region - a registered user buffer
 * @pages: the pinned pages, or NULL when the slot is free
 * @npages: how many
 * @first_off: offset of the region's first byte in @pages[0]
 * @len: the region's length in bytes
 * @mm: the registering mm, grabbed, when the pages are counted in its locked_vm
 * @flags: RDMASOCK_REG_*
 */
struct rs_region {
	struct page **pages;
	unsigned long npages;
	unsigned int first_off;
	u64 len;
	struct mm_struct *mm;
	u32 flags;
};

/**
 * struct rs_mbox - a bounded queue of messages
 * @lock: protects every field below, and rs_ep.bell
 * @ring: @mask + 1 messages
 * @mask: depth - 1 (the depth is a power of two)
 * @head: index of the oldest message (free running)
 * @tail: index of the next free slot (free running)
 * @reserved: slots promised to writers that are still copying
 * @full_hit: an ordinary post found the mailbox full; wake the peer on drain
 *
 * Ordinary messages may fill all slots but one; the last one is kept for the
 * driver's own control messages (accept, refuse, close, region changes).
 */
struct rs_mbox {
	spinlock_t lock;	/* the fields below, and rs_ep.bell */
	struct rdmasock_msg *ring;
	u32 mask;
	u32 head;
	u32 tail;
	u32 reserved;
	bool full_hit;
};

/**
 * struct rs_ep - an endpoint: one open file of /dev/rdmasock
 * @ref: references: the file, a connected peer, writers in progress
 * @lock: protects @state and @peer (written under rs_mutex too)
 * @state: RDMASOCK_STATE_*
 * @peer: the connected peer (a reference is held), or NULL
 * @offer_node: entry in rs_offers while offered (rs_mutex)
 * @offer_sk: the offered socket, held, while offered (rs_mutex)
 * @offer_ino: the offered socket's inode number
 * @listen_node: entry in rs_listeners of a listener endpoint (rs_mutex)
 * @listen_sk: the listening socket of a listener endpoint, held (rs_mutex)
 * @uid: effective uid of the opener, then of whoever offered or accepted
 * @tgid: the opening process
 * @flags: RDMASOCK_EPF_*
 * @wq: readers and pollers of this endpoint
 * @mb: the mailbox
 * @bell: a doorbell token is pending (@mb.lock)
 * @sleepers: tasks blocked in read(2)
 * @last_cpu: CPU this endpoint last entered the driver on
 * @regions_rwsem: protects @regions
 * @regions: the registered regions
 */
struct rs_ep {
	struct kref ref;
	spinlock_t lock;	/* state, peer */
	int state;
	struct rs_ep *peer;
	struct list_head offer_node;
	struct sock *offer_sk;
	unsigned long offer_ino;
	struct list_head listen_node;
	struct sock *listen_sk;
	kuid_t uid;
	struct pid *tgid;
	u32 flags;
	wait_queue_head_t wq;
	struct rs_mbox mb;
	bool bell;
	atomic_t sleepers;
	int last_cpu;
	struct rw_semaphore regions_rwsem;
	struct rs_region regions[RDMASOCK_MAX_REGIONS];
};

/**
 * struct rs_tuple - the addresses of one end of a TCP connection
 * @laddr: local address (IPv4 as IPv4-mapped IPv6)
 * @raddr: remote address (likewise)
 * @lport: local port, network order
 * @rport: remote port, network order
 */
struct rs_tuple {
	struct in6_addr laddr;
	struct in6_addr raddr;
	__be16 lport;
	__be16 rport;
};

/* ---------------------------------------------------------------------------- */
/* Endpoint lifetime                                                             */

/**
 * rs_ep_free() - Free an endpoint whose last reference is gone.
 * @ref: the endpoint's kref
 *
 * By then it has no peer, no offer and no region.
 *
 * Context: Any context that may call kfree(); does not sleep.
 */
static void rs_ep_free(struct kref *ref)
{
	struct rs_ep *ep = container_of(ref, struct rs_ep, ref);

	put_pid(ep->tgid);
	kfree(ep->mb.ring);
	kfree(ep);
	atomic_dec(&rs_live_eps);
}

/**
 * rs_ep_put() - Drop a reference to an endpoint.
 * @ep: the endpoint
 *
 * Context: Any context; does not sleep.
 */
static void rs_ep_put(struct rs_ep *ep)
{
	kref_put(&ep->ref, rs_ep_free);
}

/**
 * rs_get_peer() - Take a reference to the connected peer.
 * @ep: the endpoint
 *
 * The peer pointer holds a reference of its own, so one can be added safely under
 * @ep->lock.
 *
 * Context: Process context. Takes and releases @ep->lock; does not sleep.
 * Return: the peer, to be released with rs_ep_put(), or NULL without one.
 */
static struct rs_ep *rs_get_peer(struct rs_ep *ep)
{
	struct rs_ep *peer;

	spin_lock(&ep->lock);
	peer = ep->peer;
	if (peer)
		kref_get(&peer->ref);
	spin_unlock(&ep->lock);
	return peer;
}

/**
 * rs_no_peer_error() - The error for an operation that needs a peer.
 * @ep: the endpoint, which has none
 *
 * Context: Any context.
 * Return: -EPIPE once the peer is gone, else -ENOTCONN.
 */
static int rs_no_peer_error(struct rs_ep *ep)
{
	return READ_ONCE(ep->state) == RDMASOCK_STATE_CLOSED ? -EPIPE : -ENOTCONN;
}

/**
 * rs_note_cpu() - Record the CPU an endpoint's user runs on (a hint for its peer).
 * @ep: the endpoint
 *
 * Context: Any context.
 */
static void rs_note_cpu(struct rs_ep *ep)
{
	WRITE_ONCE(ep->last_cpu, raw_smp_processor_id());
}

/* ---------------------------------------------------------------------------- */
/* Mailbox                                                                       */

static u32 rs_mb_count(const struct rs_mbox *mb)
{
	return mb->tail - mb->head;
}

static u32 rs_mb_depth(const struct rs_mbox *mb)
{
	return mb->mask + 1;
}

/* Room for one more ordinary message (one slot stays for control messages). */
static bool rs_mb_room(const struct rs_mbox *mb)
{
	return rs_mb_count(mb) + mb->reserved + 1 < rs_mb_depth(mb);
}

static struct rdmasock_msg *rs_mb_slot(struct rs_mbox *mb, u32 index)
{
	return &mb->ring[index & mb->mask];
}

static void rs_mb_append(struct rs_mbox *mb, const struct rdmasock_msg *msg)
{
	*rs_mb_slot(mb, mb->tail) = *msg;
	mb->tail++;
}

/**
 * rs_wake() - Wake an endpoint's readers and pollers.
 * @ep: the endpoint
 *
 * Context: Any context; does not sleep.
 */
static void rs_wake(struct rs_ep *ep)
{
	wake_up_interruptible_poll(&ep->wq, EPOLLIN | EPOLLRDNORM | EPOLLOUT);
}

/**
 * rs_mbox_reserve() - Promise a slot of @ep's mailbox to a writer.
 * @ep: the receiving endpoint
 *
 * A writer reserves before it copies, so that a completion is never lost after
 * the bytes have landed.
 *
 * Context: Process context. Takes and releases @ep->mb.lock; does not sleep.
 * Return: 0, or -EAGAIN when the mailbox is full (the poster is rung on drain).
 */
static int rs_mbox_reserve(struct rs_ep *ep)
{
	struct rs_mbox *mb = &ep->mb;
	int ret = 0;

	spin_lock(&mb->lock);
	if (rs_mb_room(mb)) {
		mb->reserved++;
	} else {
		mb->full_hit = true;
		ret = -EAGAIN;
	}
	spin_unlock(&mb->lock);
	return ret;
}

/**
 * rs_mbox_unreserve() - Give back a slot promised by rs_mbox_reserve().
 * @ep: the receiving endpoint
 *
 * Context: Process context. Takes and releases @ep->mb.lock; does not sleep.
 */
static void rs_mbox_unreserve(struct rs_ep *ep)
{
	spin_lock(&ep->mb.lock);
	ep->mb.reserved--;
	spin_unlock(&ep->mb.lock);
}

/**
 * rs_mbox_post_reserved() - Post a message into a reserved slot.
 * @ep: the receiving endpoint
 * @msg: the message
 *
 * A WRITE completion whose poster allowed it (RDMASOCK_MSGF_COALESCE) is merged
 * into the last queued message when that one is a mergeable completion of the same
 * region that ends where this one begins: the lengths add up and the newer imm
 * wins. Otherwise the message is appended.
 *
 * Context: Process context. Takes and releases @ep->mb.lock; wakes @ep's waiters.
 *          Does not sleep.
 */
static void rs_mbox_post_reserved(struct rs_ep *ep, const struct rdmasock_msg *msg)
{
	struct rs_mbox *mb = &ep->mb;
	struct rdmasock_msg *last;

	spin_lock(&mb->lock);
	mb->reserved--;
	last = rs_mb_count(mb) ? rs_mb_slot(mb, mb->tail - 1) : NULL;
	if (last && msg->type == RDMASOCK_MSG_WRITE && last->type == RDMASOCK_MSG_WRITE &&
	    (msg->flags & last->flags & RDMASOCK_MSGF_COALESCE) &&
	    last->info == msg->info && last->offset + last->len == msg->offset) {
		last->len += msg->len;
		last->imm = msg->imm;
		last->flags |= RDMASOCK_MSGF_MERGED;
	} else {
		rs_mb_append(mb, msg);
	}
	spin_unlock(&mb->lock);
	rs_wake(ep);
}

/**
 * rs_mbox_post() - Post an ordinary message (a notification).
 * @ep: the receiving endpoint
 * @msg: the message
 * @replace: update the imm of a queued notification with the same tag, if any,
 *           instead of appending
 *
 * Context: Process context. Takes and releases @ep->mb.lock; wakes @ep's waiters.
 *          Does not sleep.
 * Return: 0, or -EAGAIN when the mailbox is full (the poster is rung on drain).
 */
static int rs_mbox_post(struct rs_ep *ep, const struct rdmasock_msg *msg, bool replace)
{
	struct rs_mbox *mb = &ep->mb;
	int ret = 0;
	u32 i;

	spin_lock(&mb->lock);
	if (replace) {
		for (i = mb->tail; i != mb->head; i--) {
			struct rdmasock_msg *m = rs_mb_slot(mb, i - 1);

			if (m->type == msg->type && m->info == msg->info &&
			    (m->flags & RDMASOCK_MSGF_REPLACE)) {
				m->imm = msg->imm;
				m->flags |= RDMASOCK_MSGF_MERGED;
				goto out;
			}
		}
	}
	if (rs_mb_room(mb)) {
		rs_mb_append(mb, msg);
	} else {
		mb->full_hit = true;
		ret = -EAGAIN;
	}
out:
	spin_unlock(&mb->lock);
	if (!ret)
		rs_wake(ep);
	return ret;
}

/**
 * rs_mbox_post_ctl_msg() - Post a control message of the driver's own.
 * @ep: the receiving endpoint
 * @msg: the message
 *
 * Control messages may use the slot ordinary messages leave free. Should even that
 * be taken, the message is dropped: every control message also changes state that
 * RDMASOCK_IOC_RECV, RDMASOCK_IOC_INFO and poll(2) report.
 *
 * Context: Process context. Takes and releases @ep->mb.lock; wakes @ep's waiters.
 *          Does not sleep.
 */
static void rs_mbox_post_ctl_msg(struct rs_ep *ep, const struct rdmasock_msg *msg)
{
	struct rs_mbox *mb = &ep->mb;

	spin_lock(&mb->lock);
	if (rs_mb_count(mb) + mb->reserved < rs_mb_depth(mb))
		rs_mb_append(mb, msg);
	else
		pr_debug("control message %u dropped: mailbox full\n", msg->type);
	spin_unlock(&mb->lock);
	rs_wake(ep);
}

/**
 * rs_mbox_post_ctl() - Post a control message with an info and a length.
 * @ep: the receiving endpoint
 * @type: RDMASOCK_MSG_*
 * @info: the message's info
 * @len: the message's len
 *
 * Context: as rs_mbox_post_ctl_msg().
 */
static void rs_mbox_post_ctl(struct rs_ep *ep, u16 type, u32 info, u64 len)
{
	struct rdmasock_msg msg = { .type = type, .info = info, .len = len };

	rs_mbox_post_ctl_msg(ep, &msg);
}

/**
 * rs_ring() - Post a doorbell token to an endpoint.
 * @ep: the endpoint
 *
 * In doorbell mode, read(2) returns once for the token.
 *
 * Context: Process context. Takes and releases @ep->mb.lock; wakes @ep's waiters.
 *          Does not sleep.
 */
static void rs_ring(struct rs_ep *ep)
{
	spin_lock(&ep->mb.lock);
	ep->bell = true;
	spin_unlock(&ep->mb.lock);
	rs_wake(ep);
}

/**
 * rs_mbox_take() - Take up to @max messages from @ep's mailbox.
 * @ep: the endpoint
 * @out: where to put them
 * @max: at most this many (<= RS_BATCH)
 *
 * If a poster found the mailbox full, the peer gets a doorbell token once room is
 * made.
 *
 * Context: Process context. Takes and releases @ep->mb.lock, then maybe @ep->lock
 *          and the peer's mailbox lock. Does not sleep.
 * Return: the number of messages taken.
 */
static u32 rs_mbox_take(struct rs_ep *ep, struct rdmasock_msg *out, u32 max)
{
	struct rs_mbox *mb = &ep->mb;
	bool drained = false;
	u32 n, i;

	spin_lock(&mb->lock);
	n = min(rs_mb_count(mb), max);
	for (i = 0; i < n; i++)
		out[i] = *rs_mb_slot(mb, mb->head + i);
	mb->head += n;
	if (n && mb->full_hit) {
		mb->full_hit = false;
		drained = true;
	}
	spin_unlock(&mb->lock);
	if (drained) {
		struct rs_ep *peer = rs_get_peer(ep);

		if (peer) {
			rs_ring(peer);
			rs_ep_put(peer);
		}
	}
	return n;
}

/**
 * rs_mbox_pending() - Messages queued, and whether a doorbell token is pending.
 * @ep: the endpoint
 * @bell: out: the token (may be NULL); it is not consumed
 *
 * Context: Process context. Takes and releases @ep->mb.lock; does not sleep.
 * Return: the number of queued messages.
 */
static u32 rs_mbox_pending(struct rs_ep *ep, bool *bell)
{
	u32 n;

	spin_lock(&ep->mb.lock);
	n = rs_mb_count(&ep->mb);
	if (bell)
		*bell = ep->bell;
	spin_unlock(&ep->mb.lock);
	return n;
}

/* ---------------------------------------------------------------------------- */
/* Regions                                                                       */

/**
 * rs_region_release() - Unpin a region's pages and forget it.
 * @reg: the region (its slot is freed)
 *
 * The pages are marked dirty: peers wrote into them through the kernel mapping.
 *
 * Context: Process context; may sleep (page locks, the mm's mmap lock for the
 *          locked_vm count). The owner's regions_rwsem is held for writing, or the
 *          region was never published.
 */
static void rs_region_release(struct rs_region *reg)
{
	if (!reg->pages)
		return;
	unpin_user_pages_dirty_lock(reg->pages, reg->npages, true);
	atomic_long_sub(reg->npages, &rs_pinned_pages);
	if (reg->mm) {
		account_locked_vm(reg->mm, reg->npages, false);
		mmdrop(reg->mm);
	}
	kvfree(reg->pages);
	memset(reg, 0, sizeof(*reg));
}

/**
 * rs_region_pin() - Pin the pages of a user buffer.
 * @reg: the region to fill
 * @addr: the buffer
 * @len: its length (checked by the caller)
 *
 * Context: Process context; may sleep (page faults, allocation, the mmap lock).
 * Return: 0, or a negative errno (nothing stays pinned or counted).
 */
static int rs_region_pin(struct rs_region *reg, u64 addr, u64 len)
{
	unsigned long start = addr & PAGE_MASK;
	unsigned long npages, done = 0;
	int ret;

	reg->first_off = offset_in_page(addr);
	npages = DIV_ROUND_UP(reg->first_off + len, PAGE_SIZE);
	reg->pages = kvmalloc_array(npages, sizeof(*reg->pages), GFP_KERNEL_ACCOUNT);
	if (!reg->pages)
		return -ENOMEM;
	if (account_memlock && current->mm) {
		ret = account_locked_vm(current->mm, npages, true);
		if (ret)
			goto free;
		reg->mm = current->mm;
		mmgrab(reg->mm);
	}
	while (done < npages) {
		int n = min_t(unsigned long, npages - done, INT_MAX);

		n = pin_user_pages_fast(start + done * PAGE_SIZE, n,
					FOLL_WRITE | FOLL_LONGTERM, reg->pages + done);
		if (n <= 0) {
			ret = n ? n : -EFAULT;
			goto unpin;
		}
		done += n;
	}
	reg->npages = npages;
	reg->len = len;
	atomic_long_add(npages, &rs_pinned_pages);
	return 0;

unpin:
	if (done)
		unpin_user_pages(reg->pages, done);
	if (reg->mm) {
		account_locked_vm(reg->mm, npages, false);
		mmdrop(reg->mm);
	}
free:
	kvfree(reg->pages);
	memset(reg, 0, sizeof(*reg));
	return ret;
}

/**
 * rs_region_copy_in() - Copy user bytes into a region.
 * @reg: the destination region (its owner's regions_rwsem is held)
 * @offset: where in the region (checked: @offset + @len <= @reg->len)
 * @src: the caller's source buffer
 * @len: bytes
 *
 * Page by page: kmap_local_page(), copy_from_user(), kunmap_local().
 *
 * Context: Process context; may sleep (faults on @src).
 * Return: 0, -EFAULT if @src faults, or -EINTR on a fatal signal (the region then
 *         holds part of the bytes, which no completion announces).
 */
static int rs_region_copy_in(struct rs_region *reg, u64 offset,
			     const char __user *src, u64 len)
{
	u64 pos = reg->first_off + offset;

	while (len) {
		struct page *page = reg->pages[pos >> PAGE_SHIFT];
		unsigned int off = offset_in_page(pos);
		size_t chunk = min_t(u64, len, PAGE_SIZE - off);
		unsigned long left;
		char *kaddr;

		kaddr = kmap_local_page(page);
		left = copy_from_user(kaddr + off, src, chunk);
		kunmap_local(kaddr);
		flush_dcache_page(page);
		if (left)
			return -EFAULT;
		src += chunk;
		pos += chunk;
		len -= chunk;
		if (len && fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	return 0;
}

/**
 * rs_close_value() - Read an endpoint's close value.
 * @ep: the endpoint, being released
 * @value: out: the u64 at the start of its lowest close-value region
 *
 * Reads the pinned page through a temporary kernel mapping: the owner may be dead
 * or have exec'd, its pages stay pinned until we unpin them.
 *
 * Context: Process context; may sleep (regions_rwsem).
 * Return: true if the endpoint has a close-value region.
 */
static bool rs_close_value(struct rs_ep *ep, u64 *value)
{
	bool found = false;
	int i;

	down_read(&ep->regions_rwsem);
	for (i = 0; i < RDMASOCK_MAX_REGIONS && !found; i++) {
		struct rs_region *reg = &ep->regions[i];
		char *kaddr;

		if (!reg->pages || !(reg->flags & RDMASOCK_REG_CLOSE_VALUE))
			continue;
		/* 8-byte aligned and at least 8 bytes long: within the first page. */
		kaddr = kmap_local_page(reg->pages[0]);
		*value = READ_ONCE(*(u64 *)(kaddr + reg->first_off));
		kunmap_local(kaddr);
		found = true;
	}
	up_read(&ep->regions_rwsem);
	return found;
}

/* ---------------------------------------------------------------------------- */
/* Rendezvous                                                                    */

/**
 * rs_tcp_socket() - Look up a TCP socket among the caller's fds.
 * @fd: the caller's fd
 * @err: out: the error when NULL is returned
 *
 * sockfd_lookup() resolves @fd in current's own fd table, so a socket found here
 * is one the caller holds.
 *
 * Context: Process context.
 * Return: the socket (release with sockfd_put()), or NULL.
 */
static struct socket *rs_tcp_socket(int fd, int *err)
{
	struct socket *sock = sockfd_lookup(fd, err);
	struct sock *sk;

	if (!sock)
		return NULL;
	sk = sock->sk;
	if (!sk || sock->type != SOCK_STREAM || sk->sk_protocol != IPPROTO_TCP ||
	    (sk->sk_family != AF_INET && sk->sk_family != AF_INET6)) {
		sockfd_put(sock);
		*err = -EPROTONOSUPPORT;
		return NULL;
	}
	return sock;
}

/**
 * rs_sock_tuple() - Read the addresses of a connected TCP socket.
 * @sk: the socket
 * @t: out: its addresses
 *
 * The fields are read as the socket has them (sk_rcv_saddr, sk_daddr,
 * inet_sport, sk_dport, and their IPv6 counterparts), without the socket lock:
 * they do not change while the connection exists, and a socket in any other state
 * is rejected.
 *
 * Context: Any context.
 * Return: true if @sk is a connection (established, or half-closed) with ports.
 */
static bool rs_sock_tuple(struct sock *sk, struct rs_tuple *t)
{
	const struct inet_sock *inet = inet_sk(sk);
	int state = READ_ONCE(sk->sk_state);

	if (!((1 << state) & (TCPF_ESTABLISHED | TCPF_CLOSE_WAIT | TCPF_FIN_WAIT1 |
			      TCPF_FIN_WAIT2)))
		return false;
	switch (sk->sk_family) {
	case AF_INET:
		ipv6_addr_set_v4mapped(READ_ONCE(sk->sk_rcv_saddr), &t->laddr);
		ipv6_addr_set_v4mapped(READ_ONCE(sk->sk_daddr), &t->raddr);
		break;
#if IS_ENABLED(CONFIG_IPV6)
	case AF_INET6:
		t->laddr = sk->sk_v6_rcv_saddr;
		t->raddr = sk->sk_v6_daddr;
		break;
#endif
	default:
		return false;
	}
	t->lport = READ_ONCE(inet->inet_sport);
	t->rport = READ_ONCE(sk->sk_dport);
	return t->lport && t->rport;
}

/**
 * rs_tuples_mirror() - Are two tuples the two ends of one connection?
 * @a: one end
 * @b: the other
 *
 * Context: Any context.
 * Return: true if each one's local address and port are the other's remote ones.
 */
static bool rs_tuples_mirror(const struct rs_tuple *a, const struct rs_tuple *b)
{
	return a->lport == b->rport && a->rport == b->lport &&
	       ipv6_addr_equal(&a->laddr, &b->raddr) &&
	       ipv6_addr_equal(&a->raddr, &b->laddr);
}

/**
 * rs_set_state() - Change an endpoint's state.
 * @ep: the endpoint
 * @state: RDMASOCK_STATE_*
 *
 * Context: Process context, rs_mutex held. Takes and releases @ep->lock.
 */
static void rs_set_state(struct rs_ep *ep, int state)
{
	lockdep_assert_held(&rs_mutex);
	spin_lock(&ep->lock);
	WRITE_ONCE(ep->state, state);
	spin_unlock(&ep->lock);
}

/**
 * rs_take_offer() - Take an endpoint's offer off the list.
 * @ep: the endpoint, offered
 *
 * Context: Process context, rs_mutex held.
 * Return: the socket the offer held; the caller drops it with sock_put() after
 *         releasing rs_mutex.
 */
static struct sock *rs_take_offer(struct rs_ep *ep)
{
	struct sock *sk = ep->offer_sk;

	lockdep_assert_held(&rs_mutex);
	list_del_init(&ep->offer_node);
	ep->offer_sk = NULL;
	return sk;
}

/**
 * rs_ioc_offer() - RDMASOCK_IOC_OFFER.
 * @ep: the endpoint, idle
 * @uarg: struct rdmasock_offer
 *
 * Context: Process context; may sleep (rs_mutex, user copies).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_offer(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_offer o;
	struct socket *sock;
	long ret = 0;
	int err;

	if (copy_from_user(&o, uarg, sizeof(o)))
		return -EFAULT;
	if (o.flags)
		return -EINVAL;
	sock = rs_tcp_socket(o.sock_fd, &err);
	if (!sock)
		return err;
	o.sock_ino = SOCK_INODE(sock)->i_ino;

	mutex_lock(&rs_mutex);
	if (ep->state != RDMASOCK_STATE_IDLE || ep->listen_sk) {
		ret = -EBUSY;
	} else {
		sock_hold(sock->sk);
		ep->offer_sk = sock->sk;
		ep->offer_ino = o.sock_ino;
		ep->uid = current_euid();
		list_add_tail(&ep->offer_node, &rs_offers);
		rs_set_state(ep, RDMASOCK_STATE_OFFERED);
	}
	mutex_unlock(&rs_mutex);
	sockfd_put(sock);
	if (!ret && copy_to_user(uarg, &o, sizeof(o)))
		ret = -EFAULT;	/* the offer stands; WITHDRAW or close takes it back */
	return ret;
}

/**
 * rs_find_offer() - Find the offer made for the other end of a connection.
 * @sk: the caller's connected socket
 * @mine: its addresses
 * @peer_ino: 0, or the inode number the offered socket must have
 *
 * Context: Process context, rs_mutex held. Does not sleep.
 * Return: the offering endpoint, or NULL.
 */
static struct rs_ep *rs_find_offer(struct sock *sk, const struct rs_tuple *mine,
				   u64 peer_ino)
{
	struct rs_tuple theirs;
	struct rs_ep *c;

	lockdep_assert_held(&rs_mutex);
	list_for_each_entry(c, &rs_offers, offer_node) {
		if (!net_eq(sock_net(c->offer_sk), sock_net(sk)))
			continue;
		if (peer_ino && c->offer_ino != peer_ino)
			continue;
		if (!rs_sock_tuple(c->offer_sk, &theirs))
			continue;
		if (rs_tuples_mirror(mine, &theirs))
			return c;
	}
	return NULL;
}

/**
 * rs_ioc_accept() - RDMASOCK_IOC_ACCEPT.
 * @ep: the endpoint (idle, unless refusing)
 * @uarg: struct rdmasock_accept
 *
 * Pairs @ep with the endpoint that offered the other end of the caller's
 * connection, or refuses that offer (RDMASOCK_ACCEPT_REFUSE, or a uid mismatch
 * under same_uid_only). The offering endpoint is told with RDMASOCK_MSG_ACCEPTED
 * or RDMASOCK_MSG_REFUSED.
 *
 * Context: Process context; may sleep (rs_mutex, user copies).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_accept(struct rs_ep *ep, void __user *uarg)
{
	bool refuse;
	struct rdmasock_accept a;
	struct rs_tuple mine;
	struct rs_ep *c = NULL;
	struct sock *held = NULL;
	struct socket *sock;
	long ret = 0;
	int err;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.flags & ~RDMASOCK_ACCEPT_REFUSE)
		return -EINVAL;
	refuse = a.flags & RDMASOCK_ACCEPT_REFUSE;
	sock = rs_tcp_socket(a.sock_fd, &err);
	if (!sock)
		return err;
	if (!rs_sock_tuple(sock->sk, &mine)) {
		sockfd_put(sock);
		return -ENOTCONN;
	}

	mutex_lock(&rs_mutex);
	if (!refuse && (ep->state != RDMASOCK_STATE_IDLE || ep->listen_sk)) {
		ret = -EBUSY;
		goto unlock;
	}
	c = rs_find_offer(sock->sk, &mine, a.peer_ino);
	if (!c) {
		ret = -ENOENT;
		goto unlock;
	}
	held = rs_take_offer(c);
	a.peer_uid = from_kuid_munged(current_user_ns(), c->uid);
	a.peer_pid = pid_vnr(c->tgid);
	if (!refuse && same_uid_only && !uid_eq(c->uid, current_euid())) {
		refuse = true;
		ret = -EPERM;
	}
	if (refuse) {
		rs_set_state(c, RDMASOCK_STATE_REFUSED);
		rs_mbox_post_ctl(c, RDMASOCK_MSG_REFUSED, -ret, 0);
		goto unlock;
	}
	/* Each peer pointer holds a reference. */
	kref_get(&c->ref);
	kref_get(&ep->ref);
	ep->uid = current_euid();
	spin_lock(&ep->lock);
	ep->peer = c;
	WRITE_ONCE(ep->state, RDMASOCK_STATE_CONNECTED);
	spin_unlock(&ep->lock);
	spin_lock(&c->lock);
	c->peer = ep;
	WRITE_ONCE(c->state, RDMASOCK_STATE_CONNECTED);
	spin_unlock(&c->lock);
	rs_mbox_post_ctl(c, RDMASOCK_MSG_ACCEPTED, 0, 0);
unlock:
	mutex_unlock(&rs_mutex);
	if (held)
		sock_put(held);
	sockfd_put(sock);
	if ((!ret || ret == -EPERM) && copy_to_user(uarg, &a, sizeof(a)))
		ret = -EFAULT;
	return ret;
}

/**
 * rs_ioc_listen() - RDMASOCK_IOC_LISTEN: make @ep the listener endpoint of a socket.
 * @ep: the endpoint, idle, with no listening socket yet
 * @uarg: struct rdmasock_listen
 *
 * Context: Process context; may sleep (rs_mutex, user copies).
 * Return: 0 or a negative errno (EINVAL: the socket does not listen; EBUSY: @ep is
 *         in use).
 */
static long rs_ioc_listen(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_listen l;
	struct socket *sock;
	long ret = 0;
	int err;

	if (copy_from_user(&l, uarg, sizeof(l)))
		return -EFAULT;
	if (l.flags)
		return -EINVAL;
	sock = rs_tcp_socket(l.sock_fd, &err);
	if (!sock)
		return err;
	if (READ_ONCE(sock->sk->sk_state) != TCP_LISTEN) {
		sockfd_put(sock);
		return -EINVAL;
	}
	mutex_lock(&rs_mutex);
	if (ep->state != RDMASOCK_STATE_IDLE || ep->listen_sk) {
		ret = -EBUSY;
	} else {
		sock_hold(sock->sk);
		ep->listen_sk = sock->sk;
		ep->uid = current_euid();
		list_add_tail(&ep->listen_node, &rs_listeners);
	}
	mutex_unlock(&rs_mutex);
	sockfd_put(sock);
	return ret;
}

/**
 * rs_listener_takes() - Does a listening socket take connections to @addr:@port?
 * @sk: the listening socket
 * @addr: the destination (IPv4 as IPv4-mapped IPv6)
 * @port: the destination port, host order
 *
 * As the kernel's own lookup does for a listener: its port, and its bound address
 * or a wildcard of a family that takes @addr.
 *
 * Context: Any context.
 * Return: true if it does (and still listens).
 */
static bool rs_listener_takes(struct sock *sk, const struct in6_addr *addr, u16 port)
{
	bool v4 = ipv6_addr_v4mapped(addr);

	if (READ_ONCE(sk->sk_state) != TCP_LISTEN || inet_sk(sk)->inet_num != port)
		return false;
	switch (sk->sk_family) {
	case AF_INET: {
		__be32 bound = READ_ONCE(sk->sk_rcv_saddr);

		return v4 && (!bound || bound == addr->s6_addr32[3]);
	}
#if IS_ENABLED(CONFIG_IPV6)
	case AF_INET6:
		if (ipv6_addr_any(&sk->sk_v6_rcv_saddr))
			return !(v4 && sk->sk_ipv6only);
		return ipv6_addr_equal(&sk->sk_v6_rcv_saddr, addr);
#endif
	default:
		return false;
	}
}

/**
 * rs_ioc_find() - RDMASOCK_IOC_FIND: find a listener endpoint for a destination.
 * @uarg: struct rdmasock_find
 *
 * Any endpoint may ask; the answer does not depend on it.
 *
 * Context: Process context; may sleep (rs_mutex, user copies).
 * Return: 0 (found: its uid and pid written back) or a negative errno (ENOENT).
 */
static long rs_ioc_find(void __user *uarg)
{
	struct net *net = current->nsproxy->net_ns;
	struct rdmasock_find f;
	struct in6_addr addr;
	struct rs_ep *l;
	long ret = -ENOENT;

	if (copy_from_user(&f, uarg, sizeof(f)))
		return -EFAULT;
	if (f.flags || f.pad)
		return -EINVAL;
	memcpy(&addr, f.addr, sizeof(addr));
	mutex_lock(&rs_mutex);
	list_for_each_entry(l, &rs_listeners, listen_node) {
		if (!net_eq(sock_net(l->listen_sk), net) ||
		    !rs_listener_takes(l->listen_sk, &addr, f.port))
			continue;
		f.uid = from_kuid_munged(current_user_ns(), l->uid);
		f.pid = pid_vnr(l->tgid);
		ret = 0;
		break;
	}
	mutex_unlock(&rs_mutex);
	if (!ret && copy_to_user(uarg, &f, sizeof(f)))
		ret = -EFAULT;
	return ret;
}

/**
 * rs_ioc_withdraw() - RDMASOCK_IOC_WITHDRAW: take an offer back.
 * @ep: the endpoint
 *
 * Decided under rs_mutex, so exactly one of withdraw and accept wins.
 *
 * Context: Process context; may sleep (rs_mutex).
 * Return: 0 (withdrawn, or nothing was offered), -EISCONN (accepted first) or
 *         -ECONNREFUSED (refused first).
 */
static long rs_ioc_withdraw(struct rs_ep *ep)
{
	struct sock *held = NULL;
	long ret = 0;

	mutex_lock(&rs_mutex);
	switch (ep->state) {
	case RDMASOCK_STATE_OFFERED:
		held = rs_take_offer(ep);
		rs_set_state(ep, RDMASOCK_STATE_IDLE);
		break;
	case RDMASOCK_STATE_CONNECTED:
	case RDMASOCK_STATE_CLOSED:
		ret = -EISCONN;
		break;
	case RDMASOCK_STATE_REFUSED:
		ret = -ECONNREFUSED;
		break;
	}
	mutex_unlock(&rs_mutex);
	if (held)
		sock_put(held);
	return ret;
}

/* ---------------------------------------------------------------------------- */
/* Data path                                                                     */

/**
 * rs_still_peers() - Is @target still connected to @ep?
 * @target: the endpoint written to
 * @ep: the writer
 *
 * Checked with @target's regions_rwsem held: release marks the endpoint closed
 * before it takes that lock to unpin, so a writer that passes this check copies
 * into pages that stay pinned until it is done.
 *
 * Context: Process context. Takes and releases @target->lock.
 * Return: true if connected.
 */
static bool rs_still_peers(struct rs_ep *target, struct rs_ep *ep)
{
	bool ok;

	spin_lock(&target->lock);
	ok = target->state == RDMASOCK_STATE_CONNECTED && target->peer == ep;
	spin_unlock(&target->lock);
	return ok;
}

/**
 * rs_ioc_write() - RDMASOCK_IOC_WRITE: the "RDMA write".
 * @ep: the writing endpoint
 * @uarg: struct rdmasock_write
 *
 * Copies from the caller's buffer into the peer's region @region at @offset, then
 * posts a RDMASOCK_MSG_WRITE completion into the peer's mailbox. A mailbox slot is
 * reserved before the copy, so an announced write is never lost and a write that
 * cannot be announced is not made.
 *
 * Context: Process context; may sleep (the peer's regions_rwsem, faults on the
 *          source buffer).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_write(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_write w;
	struct rdmasock_msg msg;
	struct rs_region *reg;
	struct rs_ep *peer;
	long ret;

	if (copy_from_user(&w, uarg, sizeof(w)))
		return -EFAULT;
	if (w.flags & ~RDMASOCK_WRITE_COALESCE || w.region >= RDMASOCK_MAX_REGIONS)
		return -EINVAL;
	peer = rs_get_peer(ep);
	if (!peer)
		return rs_no_peer_error(ep);
	ret = down_read_killable(&peer->regions_rwsem);
	if (ret)
		goto put;
	if (!rs_still_peers(peer, ep)) {
		ret = -EPIPE;
		goto unlock;
	}
	reg = &peer->regions[w.region];
	if (!reg->pages) {
		ret = -ENOENT;
		goto unlock;
	}
	if (reg->flags & RDMASOCK_REG_CLOSE_VALUE) {
		ret = -EACCES;
		goto unlock;
	}
	if (w.offset > reg->len || w.len > reg->len - w.offset) {
		ret = -ERANGE;
		goto unlock;
	}
	ret = rs_mbox_reserve(peer);
	if (ret)
		goto unlock;
	ret = rs_region_copy_in(reg, w.offset, u64_to_user_ptr(w.addr), w.len);
	if (ret) {
		rs_mbox_unreserve(peer);
		goto unlock;
	}
	msg = (struct rdmasock_msg) {
		.type = RDMASOCK_MSG_WRITE,
		.flags = (w.flags & RDMASOCK_WRITE_COALESCE) ? RDMASOCK_MSGF_COALESCE : 0,
		.info = w.region,
		.offset = w.offset,
		.len = w.len,
		.imm = w.imm,
	};
	rs_mbox_post_reserved(peer, &msg);
unlock:
	up_read(&peer->regions_rwsem);
put:
	rs_ep_put(peer);
	return ret;
}

/**
 * rs_ioc_notify() - RDMASOCK_IOC_NOTIFY: post a message of the caller's own.
 * @ep: the endpoint
 * @uarg: struct rdmasock_notify
 *
 * Context: Process context; may sleep (user copy).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_notify(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_notify n;
	struct rdmasock_msg msg;
	struct rs_ep *peer;
	long ret;

	if (copy_from_user(&n, uarg, sizeof(n)))
		return -EFAULT;
	if (n.flags & ~RDMASOCK_NOTIFY_REPLACE)
		return -EINVAL;
	peer = rs_get_peer(ep);
	if (!peer)
		return rs_no_peer_error(ep);
	msg = (struct rdmasock_msg) {
		.type = RDMASOCK_MSG_NOTIFY,
		.flags = (n.flags & RDMASOCK_NOTIFY_REPLACE) ? RDMASOCK_MSGF_REPLACE : 0,
		.info = n.tag,
		.imm = n.imm,
	};
	ret = rs_mbox_post(peer, &msg, n.flags & RDMASOCK_NOTIFY_REPLACE);
	rs_ep_put(peer);
	return ret;
}

/**
 * rs_peer_hints() - The peer's CPU and sleepers, for the caller's spin policy.
 * @ep: the endpoint
 * @cpu: out: the CPU the peer last entered the driver on, or ~0
 * @sleeping: out: the peer's tasks blocked in read(2)
 *
 * Context: Process context. Takes and releases @ep->lock.
 */
static void rs_peer_hints(struct rs_ep *ep, u32 *cpu, u32 *sleeping)
{
	*cpu = ~0U;
	*sleeping = 0;
	spin_lock(&ep->lock);
	if (ep->peer) {
		*cpu = READ_ONCE(ep->peer->last_cpu);
		*sleeping = atomic_read(&ep->peer->sleepers);
	}
	spin_unlock(&ep->lock);
}

/**
 * rs_ioc_recv() - RDMASOCK_IOC_RECV: take mail without blocking.
 * @ep: the endpoint
 * @uarg: struct rdmasock_recv
 *
 * Messages taken are lost if the copy to the caller's array faults.
 *
 * Context: Process context; may sleep (user copies).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_recv(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_msg batch[RS_BATCH];
	struct rdmasock_recv r;
	char __user *dst;
	u32 n;

	if (copy_from_user(&r, uarg, sizeof(r)))
		return -EFAULT;
	dst = u64_to_user_ptr(r.msgs);
	r.count = 0;
	while (r.count < r.max) {
		n = rs_mbox_take(ep, batch, min_t(u32, RS_BATCH, r.max - r.count));
		if (!n)
			break;
		if (copy_to_user(dst + (size_t)r.count * sizeof(batch[0]), batch,
				 n * sizeof(batch[0])))
			return -EFAULT;
		r.count += n;
	}
	/* The state after the messages: a close is reported with nothing left behind. */
	r.state = READ_ONCE(ep->state);
	r.pending = rs_mbox_pending(ep, NULL);
	rs_peer_hints(ep, &r.peer_cpu, &r.peer_sleeping);
	r.reserved = 0;
	r.pad = 0;
	if (copy_to_user(uarg, &r, sizeof(r)))
		return -EFAULT;
	return 0;
}

/**
 * rs_ioc_reg() - RDMASOCK_IOC_REG: register a region.
 * @ep: the endpoint
 * @uarg: struct rdmasock_reg
 *
 * A connected peer is told with RDMASOCK_MSG_REGION.
 *
 * Context: Process context; may sleep (pinning, regions_rwsem).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_reg(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_reg r;
	struct rs_region reg = {};
	struct rs_ep *peer;
	long ret;
	int id;

	if (copy_from_user(&r, uarg, sizeof(r)))
		return -EFAULT;
	if (r.flags & ~RDMASOCK_REG_CLOSE_VALUE || !r.len || r.len > max_region_bytes ||
	    r.addr + r.len < r.addr)
		return -EINVAL;
	if ((r.flags & RDMASOCK_REG_CLOSE_VALUE) && (r.len < sizeof(u64) || r.addr % sizeof(u64)))
		return -EINVAL;
	ret = rs_region_pin(&reg, r.addr, r.len);
	if (ret)
		return ret;
	reg.flags = r.flags;
	down_write(&ep->regions_rwsem);
	for (id = 0; id < RDMASOCK_MAX_REGIONS; id++)
		if (!ep->regions[id].pages)
			break;
	if (id < RDMASOCK_MAX_REGIONS)
		ep->regions[id] = reg;
	up_write(&ep->regions_rwsem);
	if (id == RDMASOCK_MAX_REGIONS) {
		rs_region_release(&reg);
		return -ENOSPC;
	}
	peer = rs_get_peer(ep);
	if (peer && !(r.flags & RDMASOCK_REG_CLOSE_VALUE))
		rs_mbox_post_ctl(peer, RDMASOCK_MSG_REGION, id, r.len);
	if (peer)
		rs_ep_put(peer);
	r.id = id;
	if (copy_to_user(uarg, &r, sizeof(r)))
		return -EFAULT;	/* registered all the same: UNREG or close frees it */
	return 0;
}

/**
 * rs_ioc_unreg() - RDMASOCK_IOC_UNREG: unregister a region.
 * @ep: the endpoint
 * @id: the region id
 *
 * Waits for writes into the region in progress to finish.
 *
 * Context: Process context; may sleep (regions_rwsem, unpinning).
 * Return: 0 or -ENOENT.
 */
static long rs_ioc_unreg(struct rs_ep *ep, u32 id)
{
	struct rs_region reg;
	struct rs_ep *peer;

	if (id >= RDMASOCK_MAX_REGIONS)
		return -ENOENT;
	down_write(&ep->regions_rwsem);
	reg = ep->regions[id];
	memset(&ep->regions[id], 0, sizeof(reg));
	up_write(&ep->regions_rwsem);
	if (!reg.pages)
		return -ENOENT;
	peer = rs_get_peer(ep);
	if (peer && !(reg.flags & RDMASOCK_REG_CLOSE_VALUE))
		rs_mbox_post_ctl(peer, RDMASOCK_MSG_REGION, id, 0);
	if (peer)
		rs_ep_put(peer);
	rs_region_release(&reg);
	return 0;
}

/**
 * rs_ioc_info() - RDMASOCK_IOC_INFO.
 * @ep: the endpoint
 * @uarg: struct rdmasock_info
 *
 * Context: Process context; may sleep (the peer's regions_rwsem, user copy).
 * Return: 0 or a negative errno.
 */
static long rs_ioc_info(struct rs_ep *ep, void __user *uarg)
{
	struct rdmasock_info info = {};
	struct rs_ep *peer;
	int i;

	info.state = READ_ONCE(ep->state);
	info.flags = READ_ONCE(ep->flags);
	info.peer_uid = ~0U;
	info.mbox_depth = rs_mb_depth(&ep->mb);
	peer = rs_get_peer(ep);
	if (peer) {
		info.peer_uid = from_kuid_munged(current_user_ns(), peer->uid);
		info.peer_pid = pid_vnr(peer->tgid);
		down_read(&peer->regions_rwsem);
		for (i = 0; i < RDMASOCK_MAX_REGIONS; i++)
			if (!(peer->regions[i].flags & RDMASOCK_REG_CLOSE_VALUE))
				info.peer_region_len[i] = peer->regions[i].len;
		up_read(&peer->regions_rwsem);
		rs_ep_put(peer);
	}
	if (copy_to_user(uarg, &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

/* ---------------------------------------------------------------------------- */
/* File operations                                                               */

/**
 * rs_open() - Create an endpoint.
 * @inode: the device inode
 * @file: the new file
 *
 * Context: Process context; may sleep (allocation).
 * Return: 0 or -ENOMEM.
 */
static int rs_open(struct inode *inode, struct file *file)
{
	struct rs_ep *ep;

	ep = kzalloc(sizeof(*ep), GFP_KERNEL_ACCOUNT);
	if (!ep)
		return -ENOMEM;
	ep->mb.ring = kcalloc(mbox_depth, sizeof(*ep->mb.ring), GFP_KERNEL_ACCOUNT);
	if (!ep->mb.ring) {
		kfree(ep);
		return -ENOMEM;
	}
	ep->mb.mask = mbox_depth - 1;
	spin_lock_init(&ep->mb.lock);
	kref_init(&ep->ref);
	spin_lock_init(&ep->lock);
	ep->state = RDMASOCK_STATE_IDLE;
	INIT_LIST_HEAD(&ep->offer_node);
	INIT_LIST_HEAD(&ep->listen_node);
	ep->uid = current_euid();
	ep->tgid = get_pid(task_tgid(current));
	init_waitqueue_head(&ep->wq);
	atomic_set(&ep->sleepers, 0);
	ep->last_cpu = -1;
	init_rwsem(&ep->regions_rwsem);
	atomic_inc(&rs_live_eps);
	file->private_data = ep;
	return stream_open(inode, file);
}

/**
 * rs_release() - Tear an endpoint down: its file is closed, or its process died.
 * @inode: the device inode
 * @file: the file
 *
 * Withdraws a pending offer, disconnects the peer (which gets RDMASOCK_MSG_CLOSE with
 * our close value, RDMASOCK_STATE_CLOSED and EPOLLHUP), waits for the peer's writes
 * into our regions to finish and unpins them.
 *
 * Context: Process context (possibly the exit path of the owning task, whose mm may
 *          already be gone); may sleep.
 * Return: 0.
 */
static int rs_release(struct inode *inode, struct file *file)
{
	struct rs_ep *ep = file->private_data;
	struct rdmasock_msg close = {
		.type = RDMASOCK_MSG_CLOSE,
		.info = RDMASOCK_CLOSE_RELEASED,
	};
	struct rs_ep *peer;
	struct sock *held = NULL;
	struct sock *listened = NULL;
	bool peer_held_us = false;
	int i;

	if (rs_close_value(ep, &close.imm))
		close.flags = RDMASOCK_MSGF_VALUE;
	mutex_lock(&rs_mutex);
	if (ep->state == RDMASOCK_STATE_OFFERED)
		held = rs_take_offer(ep);
	if (ep->listen_sk) {
		list_del_init(&ep->listen_node);
		listened = ep->listen_sk;
		ep->listen_sk = NULL;
	}
	spin_lock(&ep->lock);
	peer = ep->peer;
	ep->peer = NULL;
	WRITE_ONCE(ep->state, RDMASOCK_STATE_CLOSED);
	spin_unlock(&ep->lock);
	if (peer) {
		spin_lock(&peer->lock);
		if (peer->peer == ep) {
			peer->peer = NULL;
			WRITE_ONCE(peer->state, RDMASOCK_STATE_CLOSED);
			peer_held_us = true;
		}
		spin_unlock(&peer->lock);
		rs_mbox_post_ctl_msg(peer, &close);
	}
	mutex_unlock(&rs_mutex);
	if (held)
		sock_put(held);
	if (listened)
		sock_put(listened);
	if (peer) {
		if (peer_held_us)
			rs_ep_put(ep);
		rs_ep_put(peer);
	}

	/* Writers into our regions passed rs_still_peers() before we closed: wait. */
	down_write(&ep->regions_rwsem);
	for (i = 0; i < RDMASOCK_MAX_REGIONS; i++)
		rs_region_release(&ep->regions[i]);
	up_write(&ep->regions_rwsem);
	rs_ep_put(ep);
	return 0;
}

/**
 * rs_gone() - Can no more mail ever come?
 * @ep: the endpoint
 *
 * Context: Any context.
 * Return: true once the peer is gone or the offer was refused.
 */
static bool rs_gone(struct rs_ep *ep)
{
	int state = READ_ONCE(ep->state);

	return state == RDMASOCK_STATE_CLOSED || state == RDMASOCK_STATE_REFUSED;
}

/**
 * rs_doorbell_ready() - Would a doorbell read return a byte now?
 * @ep: the endpoint
 *
 * Context: Process context. Takes and releases @ep->mb.lock; does not sleep.
 * Return: true while mail is queued or a token is pending.
 */
static bool rs_doorbell_ready(struct rs_ep *ep)
{
	bool bell;

	return rs_mbox_pending(ep, &bell) || bell;
}

/**
 * rs_read_doorbell() - read(2) in doorbell mode.
 * @ep: the endpoint
 * @file: its file (for O_NONBLOCK)
 * @buf: the caller's buffer (one byte is written)
 * @count: its size
 *
 * Returns one byte while mail is queued (not consumed) or a doorbell token is
 * pending (consumed); 0 once no more mail can come and none is queued.
 *
 * Context: Process context; may sleep.
 * Return: 1, 0, or a negative errno.
 */
static ssize_t rs_read_doorbell(struct rs_ep *ep, struct file *file,
				char __user *buf, size_t count)
{
	bool ready;
	int ret;

	if (!count)
		return 0;
	for (;;) {
		spin_lock(&ep->mb.lock);
		ready = rs_mb_count(&ep->mb) || ep->bell;
		ep->bell = false;
		spin_unlock(&ep->mb.lock);
		if (ready)
			return put_user(1, buf) ? -EFAULT : 1;
		if (rs_gone(ep))
			return 0;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		atomic_inc(&ep->sleepers);
		ret = wait_event_interruptible(ep->wq, rs_doorbell_ready(ep) || rs_gone(ep));
		atomic_dec(&ep->sleepers);
		if (ret)
			return ret;
	}
}

/**
 * rs_read() - read(2): take whole messages, blocking unless O_NONBLOCK.
 * @file: the endpoint's file
 * @buf: the caller's buffer
 * @count: its size, at least one message
 * @ppos: unused (stream)
 *
 * Context: Process context; may sleep.
 * Return: bytes read (a multiple of the message size), 0 at end, or a negative
 *         errno (-EINVAL if @count is smaller than a message).
 */
static ssize_t rs_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	struct rdmasock_msg batch[RS_BATCH];
	struct rs_ep *ep = file->private_data;
	u32 n;
	int ret;

	rs_note_cpu(ep);
	if (READ_ONCE(ep->flags) & RDMASOCK_EPF_DOORBELL)
		return rs_read_doorbell(ep, file, buf, count);
	if (count < sizeof(batch[0]))
		return -EINVAL;
	for (;;) {
		n = rs_mbox_take(ep, batch, min_t(size_t, RS_BATCH, count / sizeof(batch[0])));
		if (n)
			break;
		if (rs_gone(ep))
			return 0;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		atomic_inc(&ep->sleepers);
		ret = wait_event_interruptible(ep->wq, rs_mbox_pending(ep, NULL) || rs_gone(ep));
		atomic_dec(&ep->sleepers);
		if (ret)
			return ret;
	}
	if (copy_to_user(buf, batch, n * sizeof(batch[0])))
		return -EFAULT;
	return n * sizeof(batch[0]);
}

/**
 * rs_poll() - poll(2), select(2), epoll.
 * @file: the endpoint's file
 * @wait: the poll table
 *
 * EPOLLIN: mail is queued (or, in doorbell mode, a token is pending). EPOLLOUT:
 * connected and the peer's mailbox has room. EPOLLHUP: the peer is gone.
 *
 * Context: Process context; does not sleep (takes spinlocks only).
 * Return: the event mask.
 */
static __poll_t rs_poll(struct file *file, poll_table *wait)
{
	struct rs_ep *ep = file->private_data;
	__poll_t mask = 0;
	bool bell;
	int state;

	poll_wait(file, &ep->wq, wait);
	if (rs_mbox_pending(ep, &bell) ||
	    (bell && (READ_ONCE(ep->flags) & RDMASOCK_EPF_DOORBELL)))
		mask |= EPOLLIN | EPOLLRDNORM;
	state = READ_ONCE(ep->state);
	if (state == RDMASOCK_STATE_CLOSED)
		mask |= EPOLLHUP;
	spin_lock(&ep->lock);
	if (ep->peer) {
		spin_lock(&ep->peer->mb.lock);
		if (rs_mb_room(&ep->peer->mb))
			mask |= EPOLLOUT | EPOLLWRNORM;
		spin_unlock(&ep->peer->mb.lock);
	}
	spin_unlock(&ep->lock);
	return mask;
}

/**
 * rs_ioctl() - The ioctl dispatcher.
 * @file: the endpoint's file
 * @cmd: RDMASOCK_IOC_* or FIONREAD
 * @arg: the argument
 *
 * Context: Process context; may sleep.
 * Return: 0 or a negative errno.
 */
static long rs_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct rs_ep *ep = file->private_data;
	void __user *uarg = (void __user *)arg;
	bool bell;
	u32 v;

	rs_note_cpu(ep);
	switch (cmd) {
	case RDMASOCK_IOC_VERSION:
		return put_user(RDMASOCK_ABI_VERSION, (u32 __user *)uarg);
	case RDMASOCK_IOC_SET_FLAGS:
		if (get_user(v, (u32 __user *)uarg))
			return -EFAULT;
		if (v & ~RDMASOCK_EPF_DOORBELL)
			return -EINVAL;
		WRITE_ONCE(ep->flags, v);
		rs_wake(ep);
		return 0;
	case RDMASOCK_IOC_REG:
		return rs_ioc_reg(ep, uarg);
	case RDMASOCK_IOC_UNREG:
		if (get_user(v, (u32 __user *)uarg))
			return -EFAULT;
		return rs_ioc_unreg(ep, v);
	case RDMASOCK_IOC_OFFER:
		return rs_ioc_offer(ep, uarg);
	case RDMASOCK_IOC_ACCEPT:
		return rs_ioc_accept(ep, uarg);
	case RDMASOCK_IOC_WITHDRAW:
		return rs_ioc_withdraw(ep);
	case RDMASOCK_IOC_WRITE:
		return rs_ioc_write(ep, uarg);
	case RDMASOCK_IOC_NOTIFY:
		return rs_ioc_notify(ep, uarg);
	case RDMASOCK_IOC_RECV:
		return rs_ioc_recv(ep, uarg);
	case RDMASOCK_IOC_INFO:
		return rs_ioc_info(ep, uarg);
	case RDMASOCK_IOC_RING_SELF:
		rs_ring(ep);
		return 0;
	case RDMASOCK_IOC_LISTEN:
		return rs_ioc_listen(ep, uarg);
	case RDMASOCK_IOC_FIND:
		return rs_ioc_find(uarg);
	case FIONREAD:
		v = rs_mbox_pending(ep, &bell);
		if (READ_ONCE(ep->flags) & RDMASOCK_EPF_DOORBELL)
			v = v || bell;
		else
			v *= sizeof(struct rdmasock_msg);
		return put_user(v, (int __user *)uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations rs_fops = {
	.owner		= THIS_MODULE,
	.open		= rs_open,
	.release	= rs_release,
	.read		= rs_read,
	.poll		= rs_poll,
	.unlocked_ioctl	= rs_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= no_llseek,
};

static struct miscdevice rs_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= RDMASOCK_DEVICE_NAME,
	.fops	= &rs_fops,
	.mode	= 0666,
};

/* ---------------------------------------------------------------------------- */
/* Counters (read-only parameters) and module init/exit                          */

static int rs_param_ro_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;
}

static int rs_param_live_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%d\n", atomic_read(&rs_live_eps));
}

static int rs_param_pinned_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%ld\n", atomic_long_read(&rs_pinned_pages));
}

static const struct kernel_param_ops rs_live_ops = {
	.set = rs_param_ro_set,
	.get = rs_param_live_get,
};

static const struct kernel_param_ops rs_pinned_ops = {
	.set = rs_param_ro_set,
	.get = rs_param_pinned_get,
};

module_param_cb(live_endpoints, &rs_live_ops, NULL, 0444);
MODULE_PARM_DESC(live_endpoints, "Endpoints alive now (read-only)");
module_param_cb(pinned_pages, &rs_pinned_ops, NULL, 0444);
MODULE_PARM_DESC(pinned_pages, "Pages pinned by registered regions now (read-only)");

/**
 * rs_init() - Register /dev/rdmasock.
 *
 * Context: Process context (module load); may sleep.
 * Return: 0 or a negative errno.
 */
static int __init rs_init(void)
{
	int ret;

	mbox_depth = roundup_pow_of_two(clamp(mbox_depth, 8U, 4096U));
	ret = misc_register(&rs_misc);
	if (ret)
		return ret;
	pr_info("/dev/%s ready (abi %d, mailbox %u, same_uid_only=%d)\n",
		RDMASOCK_DEVICE_NAME, RDMASOCK_ABI_VERSION, mbox_depth, same_uid_only);
	return 0;
}

/**
 * rs_exit() - Unregister /dev/rdmasock.
 *
 * Every file holds a module reference, so no endpoint can be left; the counters
 * are checked all the same.
 *
 * Context: Process context (module unload); may sleep.
 */
static void __exit rs_exit(void)
{
	misc_deregister(&rs_misc);
	WARN(atomic_read(&rs_live_eps) || atomic_long_read(&rs_pinned_pages),
	     "rdmasock: leak at unload: %d endpoints, %ld pinned pages\n",
	     atomic_read(&rs_live_eps), atomic_long_read(&rs_pinned_pages));
	WARN_ON(!list_empty(&rs_offers));
}

module_init(rs_init);
module_exit(rs_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("librdmasock authors");
MODULE_DESCRIPTION("librdmasock kernel mailbox driver: endpoints, kernel-verified rendezvous, checked RDMA-style writes");
MODULE_VERSION("1");
