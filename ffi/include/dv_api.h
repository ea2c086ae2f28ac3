/*
 * dv_api.h -- the Data Vortex endpoint API that weft is written against.
 *
 * The vendor API of the Data Vortex interconnect is not public. This header states what
 * weft needs from one, as a vendor header would: opaque handles, integer status codes,
 * explicit lengths, nothing language-specific. A vendor library can be linked in place of
 * weft's emulator (hw-sim) if it implements these calls with the guarantees documented
 * here; dv_query() reports which guarantees a fabric really gives, and weft relies only on
 * those it reports.
 *
 * Model. Endpoints attach to a fabric as node ids. Time is cut into epochs. A message
 * injected with dv_send()/dv_multicast() joins the epoch open at the switch when it
 * arrives there; the switch's arrival order is the epoch's global order. An epoch closes
 * when every attached endpoint has entered the barrier (dv_barrier()). At the close, every
 * message of the epoch is delivered to all its recipients at once, in the global order,
 * stamped with the epoch and the sender's node id; then each sender receives one
 * acknowledgement per message; then the barrier returns.
 *
 * Thread safety: every call may be made from any thread; one endpoint may be used by
 * several threads at once (sends from one, barrier and receive from another).
 */
#ifndef DV_API_H
#define DV_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this API. dv_query() reports the version a library implements. */
#define DV_API_VERSION 1

/* Status codes. Every call returns DV_OK (0) or one of these negative values. */
#define DV_OK 0
#define DV_EINVAL (-1)     /* null pointer, malformed fabric name or invalid node id */
#define DV_ENOFABRIC (-2)  /* no fabric by that name is reachable */
#define DV_EINUSE (-3)     /* the node id is already attached to this fabric */
#define DV_EMSGSIZE (-4)   /* message larger than dv_fabric_info.max_message */
#define DV_EAGAIN (-5)     /* nothing to receive and timeout_us was 0 */
#define DV_ETIMEDOUT (-6)  /* the wait ran out */
#define DV_ECLOSED (-7)    /* endpoint closed, crashed, or cut off from the fabric */
#define DV_ETRUNC (-8)     /* receive buffer too small; the message stays queued */
#define DV_EIO (-9)        /* the fabric failed or misbehaved */
#define DV_EVERSION (-10)  /* the fabric implements another API version */
#define DV_EACCES (-11)    /* the fabric refuses this node id (not a member, or no access) */

/* Guarantees, as bits of dv_fabric_info.caps. */
/* No message is lost while sender and recipient are attached. */
#define DV_CAP_RELIABLE (1u << 0)
/* Messages from one sender to one recipient arrive in injection order, once. */
#define DV_CAP_FIFO (1u << 1)
/* All recipients see the messages of an epoch in one global order. */
#define DV_CAP_TOTAL_ORDER (1u << 2)
/* Epochs close at a global barrier; an epoch's messages are delivered together at it. */
#define DV_CAP_BARRIER (1u << 3)
/* The source id of a delivery is stamped by the fabric; an endpoint cannot forge it. */
#define DV_CAP_SOURCE_STAMP (1u << 4)
/* Each injected message is positively acknowledged to its sender after delivery. */
#define DV_CAP_ACK (1u << 5)

/* An attached endpoint. Opaque; created by dv_open(), destroyed by dv_close(). */
typedef struct dv_endpoint dv_endpoint;

/* What a fabric guarantees and its limits. */
typedef struct dv_fabric_info {
    uint32_t api_version; /* DV_API_VERSION of the implementation */
    uint32_t caps;        /* DV_CAP_* bits */
    uint32_t max_message; /* largest message accepted by dv_send/dv_multicast, in bytes */
} dv_fabric_info;

/* A received message's envelope. */
typedef struct dv_message_info {
    uint32_t source; /* sender's node id, stamped by the fabric */
    uint64_t epoch;  /* epoch the message was injected in and delivered at the close of */
    size_t length;   /* message length in bytes */
} dv_message_info;

/* The acknowledgement of one injected message. */
typedef struct dv_ack {
    uint64_t ticket;    /* the ticket dv_send/dv_multicast returned */
    uint64_t epoch;     /* epoch whose close delivered the message */
    uint32_t delivered; /* recipients that took it */
    uint32_t refused;   /* recipients that were not attached at the close */
} dv_ack;

/*
 * Attaches to `fabric` as `node` and stores a new endpoint in *out.
 * `fabric` names the fabric: for the emulator "local:NAME" (a switch in this process) or
 * "unix:PATH" (a switch process listening on a Unix socket); a vendor library documents
 * its own names (e.g. a device). Fails with DV_EINUSE if `node` is already attached:
 * a node id belongs to one endpoint at a time, which is what makes source stamps
 * trustworthy. Fails with DV_EACCES if the fabric admits only certain node ids and `node`
 * is not one of them, or the caller may not reach the fabric. The endpoint takes part in
 * barriers from the next epoch on.
 */
int dv_open(const char *fabric, uint32_t node, dv_endpoint **out);

/*
 * Leaves the fabric and frees the endpoint. The others see the node gone from the member
 * list at the next barrier. Messages injected before the call are still delivered.
 * Passing NULL is allowed and does nothing.
 */
int dv_close(dv_endpoint *ep);

/* Fills *info with the fabric's guarantees and limits. */
int dv_query(const dv_endpoint *ep, dv_fabric_info *info);

/*
 * Injects `len` bytes to node `dst` in the open epoch. `dst` may be the sender itself: the
 * message then comes back in the global order like any other. On success stores the
 * message's ticket in *ticket (may be NULL); the acknowledgement carries it. A recipient
 * that is not attached at the close is counted in dv_ack.refused, not reported here.
 */
int dv_send(dv_endpoint *ep, uint32_t dst, const void *buf, size_t len, uint64_t *ticket);

/*
 * Injects one message to every node in group[0..group_len), or, when `group` is NULL, to
 * every other attached endpoint. One injection: every recipient gets the same message at
 * the same close, in the same place of the global order.
 */
int dv_multicast(dv_endpoint *ep, const uint32_t *group, size_t group_len, const void *buf,
                 size_t len, uint64_t *ticket);

/*
 * Enters the global barrier and waits until the open epoch closes; stores the closed
 * epoch's number in *epoch (may be NULL). When it returns DV_OK, every message of that
 * epoch addressed to this endpoint is queued for dv_recv() and every acknowledgement of
 * this endpoint's messages of that epoch is queued for dv_poll_ack().
 * timeout_us < 0 waits forever; on DV_ETIMEDOUT the endpoint stays in the barrier and the
 * next call waits for the same close. An epoch in which nothing was injected may be held
 * open by the fabric for a short idle period, so that idle endpoints do not spin.
 * A crashed or departed endpoint is left out of later barriers. A fabric may evict an
 * endpoint that keeps the others waiting in the barrier past a bound of its own: the
 * evicted endpoint's calls then fail with DV_ECLOSED, the others see it gone from the
 * member list, and it may attach again (dv_close, then dv_open with the same node id).
 */
int dv_barrier(dv_endpoint *ep, int64_t timeout_us, uint64_t *epoch);

/*
 * Takes the next delivered message: copies it into buf[0..cap) and fills *info.
 * timeout_us: 0 polls (DV_EAGAIN when empty), < 0 blocks. If the message is longer than
 * `cap`, returns DV_ETRUNC with info->length set and leaves the message queued.
 */
int dv_recv(dv_endpoint *ep, dv_message_info *info, void *buf, size_t cap,
            int64_t timeout_us);

/* Takes the next acknowledgement; timeout_us as for dv_recv(). */
int dv_poll_ack(dv_endpoint *ep, dv_ack *ack, int64_t timeout_us);

/*
 * Copies the node ids attached at the last epoch close, ascending, into
 * nodes[0..cap) and stores their number in *count. Returns DV_ETRUNC (with *count set) if
 * `cap` is too small. This is how a node learns that another crashed or left.
 */
int dv_members(const dv_endpoint *ep, uint32_t *nodes, size_t cap, size_t *count);

/* A static, human-readable description of a status code (never NULL). */
const char *dv_strerror(int status);

#ifdef __cplusplus
}
#endif

#endif /* DV_API_H */
