/* A C program that uses the emulator only through dv_api.h: it attaches to the fabric
 * named on its command line as node 10, announces itself to everyone, answers the first
 * "ping" it receives with "pong", checks the acknowledgements and the error paths, and
 * exits 0 only if all went as the header promises. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dv_api.h"

#define CHECK(call)                                                                      \
    do {                                                                                 \
        int rc_ = (call);                                                                \
        if (rc_ != DV_OK) {                                                              \
            fprintf(stderr, "%s:%d: %s -> %d (%s)\n", __FILE__, __LINE__, #call, rc_,   \
                    dv_strerror(rc_));                                                   \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: dv_pingpong FABRIC\n");
        return 2;
    }
    dv_endpoint *ep = NULL;
    CHECK(dv_open(argv[1], 10, &ep));

    dv_endpoint *twin = NULL;
    if (dv_open(argv[1], 10, &twin) != DV_EINUSE) {
        fprintf(stderr, "a second attachment of node 10 was not refused\n");
        return 1;
    }

    dv_fabric_info info;
    CHECK(dv_query(ep, &info));
    const uint32_t want = DV_CAP_RELIABLE | DV_CAP_FIFO | DV_CAP_TOTAL_ORDER | DV_CAP_BARRIER |
                          DV_CAP_SOURCE_STAMP | DV_CAP_ACK;
    if (info.api_version != DV_API_VERSION || (info.caps & want) != want) {
        fprintf(stderr, "unexpected fabric info: version %u caps %#x\n", info.api_version,
                info.caps);
        return 1;
    }
    char *big = calloc((size_t)info.max_message + 1, 1);
    if (dv_send(ep, 1, big, (size_t)info.max_message + 1, NULL) != DV_EMSGSIZE) {
        fprintf(stderr, "an oversized message was not refused\n");
        return 1;
    }
    free(big);

    const char hello[] = "hello from C";
    uint64_t hello_ticket = 0;
    CHECK(dv_multicast(ep, NULL, 0, hello, sizeof hello, &hello_ticket));

    int answered = 0, acked = 0;
    for (int round = 0; round < 2000 && !(answered && acked); round++) {
        uint64_t epoch = 0;
        CHECK(dv_barrier(ep, 5000000, &epoch));
        for (;;) {
            char small[2];
            dv_message_info mi;
            int rc = dv_recv(ep, &mi, small, sizeof small, 0);
            if (rc == DV_EAGAIN)
                break;
            if (rc != DV_ETRUNC || mi.length < 4) {
                fprintf(stderr, "expected DV_ETRUNC for a long message, got %d\n", rc);
                return 1;
            }
            char buf[256];
            CHECK(dv_recv(ep, &mi, buf, sizeof buf, 0));
            if (mi.epoch != epoch) {
                fprintf(stderr, "message of epoch %llu delivered at close of %llu\n",
                        (unsigned long long)mi.epoch, (unsigned long long)epoch);
                return 1;
            }
            if (mi.length >= 4 && memcmp(buf, "ping", 4) == 0 && !answered) {
                char reply[256] = "pong:";
                memcpy(reply + 5, buf + 4, mi.length - 4);
                CHECK(dv_send(ep, mi.source, reply, 5 + mi.length - 4, NULL));
                answered = 1;
            }
        }
        dv_ack ack;
        while (dv_poll_ack(ep, &ack, 0) == DV_OK) {
            if (ack.ticket == hello_ticket) {
                if (ack.delivered < 1) {
                    fprintf(stderr, "hello reached nobody\n");
                    return 1;
                }
                acked = 1;
            }
        }
    }
    if (!answered || !acked) {
        fprintf(stderr, "no ping answered (%d) or no ack (%d)\n", answered, acked);
        return 1;
    }
    uint32_t members[16];
    size_t count = 0;
    CHECK(dv_members(ep, members, 16, &count));
    printf("members:");
    for (size_t i = 0; i < count; i++)
        printf(" %u", members[i]);
    printf("\n");
    if (dv_members(ep, members, 0, &count) != DV_ETRUNC || count < 2) {
        fprintf(stderr, "dv_members with no room must say DV_ETRUNC\n");
        return 1;
    }
    CHECK(dv_close(ep));
    printf("ok\n");
    return 0;
}
