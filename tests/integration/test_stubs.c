/*
 * Integration tests of the generated stubs (protoc-gen-amtsbote through amtsbote_generate()) and
 * of protoc-c's own service stubs (ab_protobuf_service_*), through the real broker: typed
 * blocking and asynchronous calls, typed providers, provider errors, replies and requests that
 * do not unpack, and the ProtobufCService path both ways. The interface is
 * tests/integration/proto/behoerde/land/by/v1/auskunft.proto: a nested package, two services,
 * messages from an imported package, from a file without a package, nested messages and a
 * well-known type.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "behoerde/common/v1/common.ab.h" /* a file without services: a header stub */
#include "behoerde/land/by/v1/auskunft.ab.h"
#include "harness.h"

static h_broker_t B;

/* ---- a provider on a thread of its own ------------------------------------------------------ */

typedef struct {
    const char *uri;
    const char *participant;
    int (*offer)(ab_client_t *c, void *arg); /* makes the offers on the thread's client */
    void *arg;
    atomic_int stop;
    atomic_int ready;
    int rc;
    pthread_t thread;
} prov_t;

static void *
s_prov_main(void *arg)
{
    prov_t *p = arg;
    ab_client_t *c = h_client(p->uri, p->participant);
    p->rc = c ? p->offer(c, p->arg) : -1;
    if (p->rc != 0 && c)
        fprintf(stderr, "offer as %s: %s\n", p->participant, ab_client_last_error(c));
    atomic_store(&p->ready, 1);
    while (c && p->rc == 0 && !atomic_load(&p->stop))
        ab_client_run(c, 20);
    ab_client_destroy(&c);
    return NULL;
}

/* Starts the provider; returns the offer's result once it is known (or -1 after 10 s). */
static int
s_prov_start(prov_t *p, const char *uri, const char *participant,
             int (*offer)(ab_client_t *, void *), void *arg)
{
    memset(p, 0, sizeof *p);
    p->uri = uri;
    p->participant = participant;
    p->offer = offer;
    p->arg = arg;
    if (pthread_create(&p->thread, NULL, s_prov_main, p) != 0)
        return -1;
    long long deadline = h_now_ms() + 10000;
    while (!atomic_load(&p->ready) && h_now_ms() < deadline)
        usleep(5000);
    return atomic_load(&p->ready) ? p->rc : -1;
}

static void
s_prov_stop(prov_t *p)
{
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
}

/* ---- the typed provider of Auskunft and Register_Amt ---------------------------------------- */

/* Replies live here: the stub packs them as soon as a handler returns (one thread per client). */
typedef struct {
    Behoerde__Land__By__V1__AbfrageAntwort antwort;
    Behoerde__Common__V1__Aktenzeichen akte;
    char text[256];
    char aufrufer[128];
    char behoerde[128];
    char felder_buf[8][64];
    char *felder[8];
    char err[128];
    Behoerde__Common__V1__Quittung quittung;
    Google__Protobuf__Timestamp eingegangen;
    Behoerde__Common__V1__Quittung__ZusatzInfo zusatz_buf[2];
    Behoerde__Common__V1__Quittung__ZusatzInfo *zusatz[2];
    char notiz[128];
    Behoerde__Common__V1__Quittung__ZusatzInfo eintrag;
    char eintrag_text[256];
    Google__Protobuf__Empty leer;
    atomic_int served;
    atomic_int released;
} typed_t;

static Behoerde__Land__By__V1__AbfrageAntwort *
s_abfrage(ab_client_t *client, const ab_request_t *call,
          const Behoerde__Land__By__V1__AbfrageAnfrage *req, const char **errtext, void *arg)
{
    (void)client;
    typed_t *x = arg;
    atomic_fetch_add(&x->served, 1);
    if (req->fehler) {
        snprintf(x->err, sizeof x->err, "Auskunftssperre für Akte %llu",
                 req->akte ? (unsigned long long)req->akte->nummer : 0ULL);
        *errtext = x->err;
        return NULL;
    }
    if (strcmp(req->name, "stumm") == 0)
        return NULL; /* no reply, no text */
    if (req->verzoegerung_ms > 0)
        usleep((useconds_t)req->verzoegerung_ms * 1000);
    behoerde__land__by__v1__abfrage_antwort__init(&x->antwort);
    snprintf(x->text, sizeof x->text, "Auskunft zu %s", req->name);
    snprintf(x->aufrufer, sizeof x->aufrufer, "%s", ab_request_caller(call));
    x->antwort.text = x->text;
    x->antwort.aufrufer = x->aufrufer;
    if (req->akte) {
        behoerde__common__v1__aktenzeichen__init(&x->akte);
        snprintf(x->behoerde, sizeof x->behoerde, "%s", req->akte->behoerde);
        x->akte.behoerde = x->behoerde;
        x->akte.nummer = req->akte->nummer + 1;
        x->antwort.akte = &x->akte;
    }
    if (req->filter) {
        size_t n = req->filter->n_felder < 8 ? req->filter->n_felder : 8;
        for (size_t i = 0; i < n; i++) { /* reversed */
            snprintf(x->felder_buf[i], sizeof x->felder_buf[i], "%s",
                     req->filter->felder[n - 1 - i]);
            x->felder[i] = x->felder_buf[i];
        }
        x->antwort.n_felder = n;
        x->antwort.felder = x->felder;
    }
    return &x->antwort;
}

/* An allocated reply, freed by the provider's release. */
static Behoerde__Land__By__V1__ZaehlStand *
s_zaehle(ab_client_t *client, const ab_request_t *call,
         const Behoerde__Common__V1__Aktenzeichen *req, const char **errtext, void *arg)
{
    (void)client;
    (void)call;
    (void)errtext;
    typed_t *x = arg;
    atomic_fetch_add(&x->served, 1);
    Behoerde__Land__By__V1__ZaehlStand *z = malloc(sizeof *z);
    if (!z)
        return NULL;
    behoerde__land__by__v1__zaehl_stand__init(z);
    z->anzahl = req->nummer * 2;
    return z;
}

static void
s_release(ProtobufCMessage *reply, void *arg)
{
    typed_t *x = arg;
    if (reply->descriptor == &behoerde__land__by__v1__zaehl_stand__descriptor) {
        atomic_fetch_add(&x->released, 1);
        protobuf_c_message_free_unpacked(reply, NULL);
    }
}

/* A message of a file without a package in, a well-known type and nested messages out. */
static Behoerde__Common__V1__Quittung *
s_notiere_zettel(ab_client_t *client, const ab_request_t *call, const Zettel *req,
                 const char **errtext, void *arg)
{
    (void)client;
    (void)call;
    (void)errtext;
    typed_t *x = arg;
    atomic_fetch_add(&x->served, 1);
    behoerde__common__v1__quittung__init(&x->quittung);
    google__protobuf__timestamp__init(&x->eingegangen);
    x->eingegangen.seconds = 1700000000;
    x->quittung.eingegangen = &x->eingegangen;
    snprintf(x->notiz, sizeof x->notiz, "notiert: %s", req->notiz);
    for (int i = 0; i < 2; i++) {
        behoerde__common__v1__quittung__zusatz__info__init(&x->zusatz_buf[i]);
        x->zusatz_buf[i].text = i == 0 ? x->notiz : "zweiter Zusatz";
        x->zusatz[i] = &x->zusatz_buf[i];
    }
    x->quittung.n_zusatz = 2;
    x->quittung.zusatz = x->zusatz;
    return &x->quittung;
}

/* Nested message types both ways (no typed pack functions: the generic ones). */
static Behoerde__Common__V1__Quittung__ZusatzInfo *
s_eintragen(ab_client_t *client, const ab_request_t *call,
            const Behoerde__Land__By__V1__AbfrageAnfrage__Filter *req, const char **errtext,
            void *arg)
{
    (void)client;
    (void)call;
    (void)errtext;
    typed_t *x = arg;
    atomic_fetch_add(&x->served, 1);
    behoerde__common__v1__quittung__zusatz__info__init(&x->eintrag);
    size_t off = 0;
    x->eintrag_text[0] = '\0';
    for (size_t i = 0; i < req->n_felder && off < sizeof x->eintrag_text; i++)
        off += (size_t)snprintf(x->eintrag_text + off, sizeof x->eintrag_text - off, "%s%s",
                                i ? "+" : "", req->felder[i]);
    x->eintrag.text = x->eintrag_text;
    return &x->eintrag;
}

static Google__Protobuf__Empty *
s_ping(ab_client_t *client, const ab_request_t *call, const Google__Protobuf__Empty *req,
       const char **errtext, void *arg)
{
    (void)client;
    (void)call;
    (void)req;
    (void)errtext;
    typed_t *x = arg;
    atomic_fetch_add(&x->served, 1);
    google__protobuf__empty__init(&x->leer);
    return &x->leer;
}

static typed_t T;
static const Behoerde__Land__By__V1__Auskunft_Provider AUSKUNFT = {
    .abfrage = s_abfrage,
    .zaehle = s_zaehle,
    .notiere_zettel = s_notiere_zettel,
    .release = s_release,
    .arg = &T,
};
static const Behoerde__Land__By__V1__RegisterAmt_Provider REGISTER = {
    .eintragen = s_eintragen,
    .ping = s_ping,
    .arg = &T,
};

static int
s_offer_typed(ab_client_t *c, void *arg)
{
    (void)arg;
    int rc = behoerde__land__by__v1__auskunft__offer(c, &AUSKUNFT);
    return rc ? rc : behoerde__land__by__v1__register__amt__offer(c, &REGISTER);
}

/* ---- fixtures ------------------------------------------------------------------------------- */

static int
group_setup(void **state)
{
    (void)state;
    /* the slow handler in test_typed_errors blocks its client's heartbeats for 1.5 s */
    const char *extra[] = {"--heartbeat-ms", "500", "--heartbeat-timeout-ms", "5000", NULL};
    return h_broker_start(&B, 0, extra);
}

static int
group_teardown(void **state)
{
    (void)state;
    int st = h_broker_stop(&B, SIGTERM, 10000);
    if (st != 0)
        fprintf(stderr, "broker exited with %d (log in %s)\n", st, B.dir);
    return st == 0 ? 0 : -1;
}

/* ---- typed calls ---------------------------------------------------------------------------- */

static void
test_typed_blocking(void **state)
{
    (void)state;
    memset(&T, 0, sizeof T);
    prov_t p;
    assert_int_equal(s_prov_start(&p, B.tls, "land.by.lfst", s_offer_typed, NULL), 0);
    ab_client_t *c = h_client(B.tls, "kommune.09162000.meldeamt");
    assert_non_null(c);

    Behoerde__Common__V1__Aktenzeichen akte = BEHOERDE__COMMON__V1__AKTENZEICHEN__INIT;
    akte.behoerde = "LfSt";
    akte.nummer = 4711;
    Behoerde__Land__By__V1__AbfrageAnfrage__Filter filter =
        BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__FILTER__INIT;
    char *felder[] = {"name", "anschrift", "geburtsdatum"};
    filter.n_felder = 3;
    filter.felder = felder;
    Behoerde__Land__By__V1__AbfrageAnfrage req = BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__INIT;
    req.name = "Mustermann";
    req.akte = &akte;
    req.filter = &filter;
    Behoerde__Land__By__V1__AbfrageAntwort *resp = NULL;
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, &resp, 5000), 0);
    assert_non_null(resp);
    assert_string_equal(resp->text, "Auskunft zu Mustermann");
    assert_string_equal(resp->aufrufer, "kommune.09162000.meldeamt"); /* stamped by the broker */
    assert_non_null(resp->akte);
    assert_string_equal(resp->akte->behoerde, "LfSt");
    assert_int_equal(resp->akte->nummer, 4712);
    assert_int_equal(resp->n_felder, 3);
    assert_string_equal(resp->felder[0], "geburtsdatum");
    assert_string_equal(resp->felder[2], "name");
    behoerde__land__by__v1__abfrage_antwort__free_unpacked(resp, NULL);

    /* a message of another package in, an allocated reply released after packing */
    Behoerde__Land__By__V1__ZaehlStand *z = NULL;
    assert_int_equal(behoerde__land__by__v1__auskunft__zaehle__call(c, &akte, &z, 5000), 0);
    assert_int_equal(z->anzahl, 9422);
    behoerde__land__by__v1__zaehl_stand__free_unpacked(z, NULL);
    assert_int_equal(atomic_load(&T.released), 1);

    /* a message of a file without a package in; a well-known type and nested messages out */
    Zettel zettel = ZETTEL__INIT;
    zettel.notiz = "Bitte Rückruf";
    Behoerde__Common__V1__Quittung *q = NULL;
    assert_int_equal(behoerde__land__by__v1__auskunft__notiere_zettel__call(c, &zettel, &q, 5000),
                     0);
    assert_non_null(q->eingegangen);
    assert_int_equal(q->eingegangen->seconds, 1700000000);
    assert_int_equal(q->n_zusatz, 2);
    assert_string_equal(q->zusatz[0]->text, "notiert: Bitte Rückruf");
    assert_string_equal(q->zusatz[1]->text, "zweiter Zusatz");
    behoerde__common__v1__quittung__free_unpacked(q, NULL);

    /* the second service: nested message types both ways, and empty messages */
    Behoerde__Common__V1__Quittung__ZusatzInfo *info = NULL;
    assert_int_equal(
        behoerde__land__by__v1__register__amt__eintragen__call(c, &filter, &info, 5000), 0);
    assert_string_equal(info->text, "name+anschrift+geburtsdatum");
    protobuf_c_message_free_unpacked(&info->base, NULL);
    Google__Protobuf__Empty leer = GOOGLE__PROTOBUF__EMPTY__INIT, *pong = NULL;
    assert_int_equal(behoerde__land__by__v1__register__amt__ping__call(c, &leer, &pong, 5000), 0);
    assert_non_null(pong);
    google__protobuf__empty__free_unpacked(pong, NULL);
    assert_int_equal(atomic_load(&T.served), 5);

    /* bad arguments: AB_EINVAL, *resp NULL, nothing sent */
    resp = (void *)&req;
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, NULL, &resp, 5000),
                     AB_EINVAL);
    assert_null(resp);
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(NULL, &req, &resp, 5000),
                     AB_EINVAL);
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, NULL, 5000),
                     AB_EINVAL);
    assert_int_equal(atomic_load(&T.served), 5);

    ab_client_destroy(&c);
    s_prov_stop(&p);
}

typedef struct {
    int done;
    int ok;
    int status[20];
    char errtext[20][128];
} async_t;

typedef struct {
    async_t *a;
    int i;
} async_call_t;

static void
s_on_abfrage(ab_client_t *client, int status, const Behoerde__Land__By__V1__AbfrageAntwort *resp,
             const char *errtext, void *arg)
{
    (void)client;
    async_call_t *k = arg;
    k->a->done++;
    k->a->status[k->i] = status;
    snprintf(k->a->errtext[k->i], sizeof k->a->errtext[k->i], "%s", errtext ? errtext : "");
    char want[64];
    snprintf(want, sizeof want, "Auskunft zu Person %d", k->i);
    if (status == 0 && resp && strcmp(resp->text, want) == 0)
        k->a->ok++;
}

static void
test_typed_async(void **state)
{
    (void)state;
    memset(&T, 0, sizeof T);
    prov_t p;
    assert_int_equal(s_prov_start(&p, B.tcp, "land.by.lfst", s_offer_typed, NULL), 0);
    ab_client_t *c = h_client(B.tcp, "bund.bzst");
    assert_non_null(c);
    async_t a = {0};
    async_call_t k[20];
    char names[20][32];
    for (int i = 0; i < 20; i++) {
        Behoerde__Land__By__V1__AbfrageAnfrage req = BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__INIT;
        snprintf(names[i], sizeof names[i], "Person %d", i);
        req.name = names[i];
        req.fehler = i == 7; /* one provider error among them */
        k[i].a = &a;
        k[i].i = i;
        assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call_async(c, &req, 5000,
                                                                               s_on_abfrage, &k[i]),
                         0);
    }
    long long deadline = h_now_ms() + 10000;
    while (a.done < 20 && h_now_ms() < deadline)
        ab_client_run(c, 20);
    assert_int_equal(a.done, 20);
    assert_int_equal(a.ok, 19);
    assert_int_equal(a.status[7], AB_EPROVIDER);
    assert_string_equal(a.errtext[7], "Auskunftssperre für Akte 0");
    assert_int_equal(ab_client_in_flight(c), 0);

    /* a callback is required; without one nothing is sent */
    Behoerde__Land__By__V1__AbfrageAnfrage req = BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__INIT;
    assert_int_equal(
        behoerde__land__by__v1__auskunft__abfrage__call_async(c, &req, 5000, NULL, NULL),
        AB_EINVAL);
    assert_int_equal(ab_client_in_flight(c), 0);
    ab_client_destroy(&c);
    s_prov_stop(&p);
}

/* ---- errors --------------------------------------------------------------------------------- */

static void
test_typed_errors(void **state)
{
    (void)state;
    memset(&T, 0, sizeof T);
    ab_client_t *c = h_client(B.tcp, "bund.bzst");
    assert_non_null(c);
    Behoerde__Common__V1__Aktenzeichen akte = BEHOERDE__COMMON__V1__AKTENZEICHEN__INIT;
    akte.nummer = 99;
    Behoerde__Land__By__V1__AbfrageAnfrage req = BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__INIT;
    req.name = "Mustermann";
    req.akte = &akte;
    Behoerde__Land__By__V1__AbfrageAntwort *resp = NULL;

    /* nobody offers it yet */
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, &resp, 2000),
                     AB_EUNKNOWN_SERVICE);
    assert_null(resp);
    assert_non_null(strstr(ab_client_last_error(c), "behoerde.land.by.v1.Auskunft/Abfrage"));

    prov_t p;
    assert_int_equal(s_prov_start(&p, B.tcp, "land.by.lfst", s_offer_typed, NULL), 0);

    /* the typed provider's error text reaches the typed caller as PROVIDER_ERROR */
    req.fehler = 1;
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, &resp, 5000),
                     AB_EPROVIDER);
    assert_null(resp);
    assert_non_null(strstr(ab_client_last_error(c), "Auskunftssperre für Akte 99"));

    /* no reply and no text */
    req.fehler = 0;
    req.name = "stumm";
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, &resp, 5000),
                     AB_EPROVIDER);
    assert_non_null(strstr(ab_client_last_error(c), "gave no reply"));

    /* the deadline holds for typed calls too */
    req.name = "langsam";
    req.verzoegerung_ms = 1500;
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, &resp, 300),
                     AB_EDEADLINE);
    assert_null(resp);

    /* a request that is not an AbfrageAnfrage is refused by the stub; the handler never runs */
    int before = atomic_load(&T.served);
    void *raw = NULL;
    size_t raw_len = 0;
    assert_int_equal(ab_call(c, BEHOERDE__LAND__BY__V1__AUSKUNFT__ABFRAGE__AB_METHOD,
                             "\xff\xff\xff", 3, 5000, &raw, &raw_len),
                     AB_EPROVIDER);
    assert_non_null(
        strstr(ab_client_last_error(c), "is not a valid behoerde.land.by.v1.AbfrageAnfrage"));
    assert_int_equal(atomic_load(&T.served), before);

    /* offering nothing, or a NULL handler, is refused */
    Behoerde__Land__By__V1__Auskunft_Provider none = {0};
    assert_int_equal(behoerde__land__by__v1__auskunft__offer(c, &none), AB_EINVAL);
    assert_int_equal(behoerde__land__by__v1__auskunft__zaehle__offer(c, &none), AB_EINVAL);
    assert_int_equal(behoerde__land__by__v1__auskunft__offer(c, NULL), AB_EINVAL);
    ab_client_destroy(&c);
    s_prov_stop(&p);
}

/* A provider that answers bytes which are not the declared reply type. */
static void
s_garbage(ab_client_t *client, ab_request_t *req, void *arg)
{
    (void)client;
    (void)arg;
    ab_reply(&req, "\xff\xff\xff", 3);
}

static int
s_offer_garbage(ab_client_t *c, void *arg)
{
    (void)arg;
    return ab_offer(c, BEHOERDE__LAND__BY__V1__AUSKUNFT__AB_SERVICE, s_garbage, NULL);
}

static void
s_on_malformed(ab_client_t *client, int status, const Behoerde__Land__By__V1__AbfrageAntwort *resp,
               const char *errtext, void *arg)
{
    (void)client;
    async_t *a = arg;
    a->status[a->done] = status;
    snprintf(a->errtext[a->done], sizeof a->errtext[0], "%s", errtext ? errtext : "");
    a->ok += resp == NULL;
    a->done++;
}

static void
test_malformed_reply(void **state)
{
    (void)state;
    prov_t p;
    assert_int_equal(s_prov_start(&p, B.tcp, "land.by.kaputt", s_offer_garbage, NULL), 0);
    ab_client_t *c = h_client(B.tcp, "bund.bzst");
    assert_non_null(c);
    Behoerde__Land__By__V1__AbfrageAnfrage req = BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__INIT;
    Behoerde__Land__By__V1__AbfrageAntwort *resp = NULL;
    assert_int_equal(behoerde__land__by__v1__auskunft__abfrage__call(c, &req, &resp, 5000),
                     AB_EMALFORMED);
    assert_null(resp);
    async_t a = {0};
    assert_int_equal(
        behoerde__land__by__v1__auskunft__abfrage__call_async(c, &req, 5000, s_on_malformed, &a),
        0);
    long long deadline = h_now_ms() + 5000;
    while (a.done < 1 && h_now_ms() < deadline)
        ab_client_run(c, 20);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.ok, 1);
    assert_int_equal(a.status[0], AB_EMALFORMED);
    assert_string_equal(a.errtext[0], "the reply to behoerde.land.by.v1.Auskunft/Abfrage is not a "
                                      "valid behoerde.land.by.v1.AbfrageAntwort");
    ab_client_destroy(&c);
    s_prov_stop(&p);
}

/* ---- protoc-c's ProtobufCService through the broker ----------------------------------------- */

typedef struct {
    int called;
    char text[256];
    int was_null;
} closure_t;

static void
s_abfrage_closure(const Behoerde__Land__By__V1__AbfrageAntwort *resp, void *data)
{
    closure_t *k = data;
    k->called++;
    k->was_null = resp == NULL;
    if (resp)
        snprintf(k->text, sizeof k->text, "%s/%s", resp->text, resp->aufrufer);
}

static void
s_zusatz_closure(const Behoerde__Common__V1__Quittung__ZusatzInfo *resp, void *data)
{
    closure_t *k = data;
    k->called++;
    k->was_null = resp == NULL;
    if (resp)
        snprintf(k->text, sizeof k->text, "%s", resp->text);
}

/* a ProtobufCService client calling the typed provider */
static void
test_pbservice_client(void **state)
{
    (void)state;
    memset(&T, 0, sizeof T);
    ab_client_t *c = h_client(B.tcp, "bund.bzst");
    assert_non_null(c);
    ProtobufCService *svc =
        ab_protobuf_service_new(c, &behoerde__land__by__v1__auskunft__descriptor, 3000);
    assert_non_null(svc);
    Behoerde__Land__By__V1__AbfrageAnfrage req = BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__INIT;
    req.name = "Musterfrau";

    /* no provider: closure(NULL), the reason in last_error */
    closure_t k = {0};
    behoerde__land__by__v1__auskunft__abfrage(svc, &req, s_abfrage_closure, &k);
    assert_int_equal(k.called, 1);
    assert_true(k.was_null);
    assert_non_null(strstr(ab_client_last_error(c), "behoerde.land.by.v1.Auskunft/Abfrage"));

    prov_t p;
    assert_int_equal(s_prov_start(&p, B.tcp, "land.by.lfst", s_offer_typed, NULL), 0);
    memset(&k, 0, sizeof k);
    behoerde__land__by__v1__auskunft__abfrage(svc, &req, s_abfrage_closure, &k);
    assert_int_equal(k.called, 1);
    assert_false(k.was_null);
    assert_string_equal(k.text, "Auskunft zu Musterfrau/bund.bzst");

    /* the provider's error: closure(NULL) and its text */
    req.fehler = 1;
    memset(&k, 0, sizeof k);
    behoerde__land__by__v1__auskunft__abfrage(svc, &req, s_abfrage_closure, &k);
    assert_int_equal(k.called, 1);
    assert_true(k.was_null);
    assert_non_null(strstr(ab_client_last_error(c), "Auskunftssperre"));
    ab_protobuf_service_destroy(&svc);
    assert_null(svc);
    ab_protobuf_service_destroy(&svc); /* safe twice */

    /* nested message types through the generic path */
    svc = ab_protobuf_service_new(c, &behoerde__land__by__v1__register__amt__descriptor, 3000);
    assert_non_null(svc);
    Behoerde__Land__By__V1__AbfrageAnfrage__Filter filter =
        BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__FILTER__INIT;
    char *felder[] = {"a", "b"};
    filter.n_felder = 2;
    filter.felder = felder;
    memset(&k, 0, sizeof k);
    behoerde__land__by__v1__register__amt__eintragen(svc, &filter, s_zusatz_closure, &k);
    assert_int_equal(k.called, 1);
    assert_string_equal(k.text, "a+b");
    protobuf_c_service_destroy(svc); /* protobuf-c's own destroy works as well */

    assert_null(ab_protobuf_service_new(NULL, &behoerde__land__by__v1__auskunft__descriptor, 0));
    assert_null(ab_protobuf_service_new(c, NULL, 0));
    ab_client_destroy(&c);
    s_prov_stop(&p);
}

/* a protoc-c service implementation offered with ab_protobuf_service_offer() */
static void
impl_eintragen(Behoerde__Land__By__V1__RegisterAmt_Service *service,
               const Behoerde__Land__By__V1__AbfrageAnfrage__Filter *input,
               Behoerde__Common__V1__Quittung__ZusatzInfo_Closure closure, void *closure_data)
{
    (void)service;
    if (input->n_felder == 0) {
        closure(NULL, closure_data); /* protobuf-c's way to fail */
        return;
    }
    char text[128];
    snprintf(text, sizeof text, "impl:%s", input->felder[0]);
    Behoerde__Common__V1__Quittung__ZusatzInfo out =
        BEHOERDE__COMMON__V1__QUITTUNG__ZUSATZ__INFO__INIT;
    out.text = text;
    closure(&out, closure_data);
}

static void
impl_ping(Behoerde__Land__By__V1__RegisterAmt_Service *service,
          const Google__Protobuf__Empty *input, Google__Protobuf__Empty_Closure closure,
          void *closure_data)
{
    (void)service;
    (void)input;
    Google__Protobuf__Empty out = GOOGLE__PROTOBUF__EMPTY__INIT;
    closure(&out, closure_data);
}

static Behoerde__Land__By__V1__RegisterAmt_Service IMPL =
    BEHOERDE__LAND__BY__V1__REGISTER__AMT__INIT(impl_);

static int
s_offer_impl(ab_client_t *c, void *arg)
{
    (void)arg;
    return ab_protobuf_service_offer(c, &IMPL.base);
}

static void
test_pbservice_provider(void **state)
{
    (void)state;
    prov_t p;
    assert_int_equal(s_prov_start(&p, B.tcp, "land.by.register", s_offer_impl, NULL), 0);
    ab_client_t *c = h_client(B.tcp, "bund.bzst");
    assert_non_null(c);

    /* the typed stubs call it */
    Behoerde__Land__By__V1__AbfrageAnfrage__Filter filter =
        BEHOERDE__LAND__BY__V1__ABFRAGE_ANFRAGE__FILTER__INIT;
    char *felder[] = {"x"};
    filter.n_felder = 1;
    filter.felder = felder;
    Behoerde__Common__V1__Quittung__ZusatzInfo *info = NULL;
    assert_int_equal(
        behoerde__land__by__v1__register__amt__eintragen__call(c, &filter, &info, 5000), 0);
    assert_string_equal(info->text, "impl:x");
    protobuf_c_message_free_unpacked(&info->base, NULL);
    Google__Protobuf__Empty leer = GOOGLE__PROTOBUF__EMPTY__INIT, *pong = NULL;
    assert_int_equal(behoerde__land__by__v1__register__amt__ping__call(c, &leer, &pong, 5000), 0);
    google__protobuf__empty__free_unpacked(pong, NULL);

    /* closure(NULL) in the implementation: PROVIDER_ERROR for the caller */
    filter.n_felder = 0;
    assert_int_equal(
        behoerde__land__by__v1__register__amt__eintragen__call(c, &filter, &info, 5000),
        AB_EPROVIDER);
    assert_non_null(strstr(ab_client_last_error(c), "gave no reply"));

    /* and protoc-c's client stub talks to protoc-c's implementation: both ways through us */
    ProtobufCService *svc =
        ab_protobuf_service_new(c, &behoerde__land__by__v1__register__amt__descriptor, 3000);
    closure_t k = {0};
    filter.n_felder = 1;
    behoerde__land__by__v1__register__amt__eintragen(svc, &filter, s_zusatz_closure, &k);
    assert_int_equal(k.called, 1);
    assert_string_equal(k.text, "impl:x");
    ab_protobuf_service_destroy(&svc);

    /* a request that does not unpack */
    void *raw = NULL;
    size_t raw_len = 0;
    assert_int_equal(ab_call(c, BEHOERDE__LAND__BY__V1__REGISTER__AMT__EINTRAGEN__AB_METHOD,
                             "\xff\xff", 2, 5000, &raw, &raw_len),
                     AB_EPROVIDER);
    assert_non_null(strstr(ab_client_last_error(c), "is not a valid"));

    assert_int_equal(ab_protobuf_service_offer(c, NULL), AB_EINVAL);
    ab_client_destroy(&c);
    s_prov_stop(&p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_typed_blocking),   cmocka_unit_test(test_typed_async),
        cmocka_unit_test(test_typed_errors),     cmocka_unit_test(test_malformed_reply),
        cmocka_unit_test(test_pbservice_client), cmocka_unit_test(test_pbservice_provider),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
