// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * abi_dump.c - print the user API's ioctl numbers and struct layouts as the C
 * compiler sees them ("NAME VALUE" lines), for the Rust binding's test to compare
 * with (transport/tests/kmod.rs, abi_matches_the_c_header).
 */
#include <stddef.h>
#include <stdio.h>

#include "../include/uapi/rdmasock.h"

#define IOC(name) printf("%s %llu\n", #name, (unsigned long long)(name))
#define SIZE(s) printf("sizeof(%s) %zu\n", #s, sizeof(struct s))
#define OFF(s, f) printf("offsetof(%s.%s) %zu\n", #s, #f, offsetof(struct s, f))

int main(void)
{
	IOC(RDMASOCK_IOC_VERSION);
	IOC(RDMASOCK_IOC_SET_FLAGS);
	IOC(RDMASOCK_IOC_REG);
	IOC(RDMASOCK_IOC_UNREG);
	IOC(RDMASOCK_IOC_OFFER);
	IOC(RDMASOCK_IOC_ACCEPT);
	IOC(RDMASOCK_IOC_WITHDRAW);
	IOC(RDMASOCK_IOC_WRITE);
	IOC(RDMASOCK_IOC_NOTIFY);
	IOC(RDMASOCK_IOC_RECV);
	IOC(RDMASOCK_IOC_INFO);
	IOC(RDMASOCK_IOC_RING_SELF);
	IOC(RDMASOCK_IOC_LISTEN);
	IOC(RDMASOCK_IOC_FIND);
	SIZE(rdmasock_msg);
	OFF(rdmasock_msg, info);
	OFF(rdmasock_msg, imm);
	SIZE(rdmasock_reg);
	OFF(rdmasock_reg, id);
	SIZE(rdmasock_offer);
	OFF(rdmasock_offer, sock_ino);
	SIZE(rdmasock_accept);
	OFF(rdmasock_accept, peer_pid);
	SIZE(rdmasock_write);
	OFF(rdmasock_write, region);
	OFF(rdmasock_write, flags);
	SIZE(rdmasock_notify);
	OFF(rdmasock_notify, tag);
	SIZE(rdmasock_recv);
	OFF(rdmasock_recv, peer_sleeping);
	OFF(rdmasock_recv, pad);
	SIZE(rdmasock_listen);
	SIZE(rdmasock_find);
	OFF(rdmasock_find, port);
	OFF(rdmasock_find, uid);
	OFF(rdmasock_find, pid);
	SIZE(rdmasock_info);
	OFF(rdmasock_info, peer_region_len);
	OFF(rdmasock_info, mbox_depth);
	return 0;
}
