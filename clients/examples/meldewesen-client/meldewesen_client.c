/*
 * meldewesen-client - both sides of meldewesen.v1.Melderegister with the typed stubs that
 * amtsbote_generate() makes from meldewesen.proto:
 *
 *   meldewesen-client --broker URI [--as P | --cert F --key F --ca F] serve
 *       offers Melderegister/Meldebescheinigung from a tiny built-in register until SIGINT/SIGTERM
 *   meldewesen-client --broker URI [--as P | --cert F --key F --ca F] call FAMILIENNAME [VORNAME]
 *       asks for a Meldebescheinigung and prints it
 *
 * Exit codes: 0 ok, 1 the call failed (the reason on stderr), 2 usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "meldewesen/v1/meldewesen.ab.h"

/* ---- the provider ---------------------------------------------------------------------------- */

/* One reply at a time: the stub packs it as soon as the handler returns. */
typedef struct {
    Meldewesen__V1__Meldebescheinigung bescheinigung;
    Meldewesen__V1__Name name;
    Meldewesen__V1__Wohnung wohnung;
    Meldewesen__V1__Anschrift anschrift;
    Google__Protobuf__Timestamp ausgestellt;
    char aktenzeichen[64];
    char *vornamen[4];
    char *staaten[1];
    unsigned long laufend;
} melderegister_t;

static Meldewesen__V1__Meldebescheinigung *
s_meldebescheinigung(ab_client_t *client, const ab_request_t *call,
                     const Meldewesen__V1__MeldebescheinigungAnfrage *req, const char **errtext,
                     void *arg)
{
    (void)client;
    melderegister_t *r = arg;
    if (!req->name || strcmp(req->name->familienname, "Mustermann") != 0) {
        /* the caller sees PROVIDER_ERROR with this text (no personal data in it) */
        *errtext = "keine Person zu diesen Angaben im Melderegister";
        return NULL;
    }
    fprintf(stderr, "Meldebescheinigung for %s (purpose: %s)\n", ab_request_caller(call),
            ab_request_purpose(call));
    meldewesen__v1__name__init(&r->name);
    r->name.familienname = "Mustermann";
    r->vornamen[0] = "Erika";
    r->name.n_vornamen = 1;
    r->name.vornamen = r->vornamen;
    meldewesen__v1__anschrift__init(&r->anschrift);
    r->anschrift.strasse = "Heidestraße";
    r->anschrift.hausnummer = "17";
    r->anschrift.postleitzahl = "51147";
    r->anschrift.wohnort = "Köln";
    r->anschrift.gemeindeschluessel = "05315000";
    meldewesen__v1__wohnung__init(&r->wohnung);
    r->wohnung.anschrift = &r->anschrift;
    r->wohnung.status = MELDEWESEN__V1__WOHNUNGSSTATUS__ALLEINIGE_WOHNUNG;
    google__protobuf__timestamp__init(&r->ausgestellt);
    r->ausgestellt.seconds = (int64_t)time(NULL);
    meldewesen__v1__meldebescheinigung__init(&r->bescheinigung);
    snprintf(r->aktenzeichen, sizeof r->aktenzeichen, "MB-%05lu", ++r->laufend);
    r->bescheinigung.aktenzeichen = r->aktenzeichen;
    r->bescheinigung.name = &r->name;
    r->staaten[0] = "deutsch";
    r->bescheinigung.n_staatsangehoerigkeiten = 1;
    r->bescheinigung.staatsangehoerigkeiten = r->staaten;
    r->bescheinigung.aktuelle_wohnung = &r->wohnung;
    r->bescheinigung.ausgestellt = &r->ausgestellt;
    r->bescheinigung.ausstellende_behoerde = "Stadt Köln, Meldebehörde";
    r->bescheinigung.ergebnis_case = MELDEWESEN__V1__MELDEBESCHEINIGUNG__ERGEBNIS_GEFUNDEN;
    r->bescheinigung.gefunden = 1;
    return &r->bescheinigung;
}

static ab_client_t *volatile s_serving; /* for the signal handler only */

static void
s_on_signal(int sig)
{
    (void)sig;
    if (s_serving)
        ab_client_stop(s_serving);
}

static int
s_serve(ab_client_t *c)
{
    melderegister_t reg = {0};
    const Meldewesen__V1__Melderegister_Provider provider = {
        .meldebescheinigung = s_meldebescheinigung,
        .arg = &reg,
    };
    int rc = meldewesen__v1__melderegister__offer(c, &provider);
    if (rc != 0) {
        fprintf(stderr, "offer: %s: %s\n", ab_err_name(rc), ab_client_last_error(c));
        return 1;
    }
    s_serving = c;
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    printf("ready: %s\n", MELDEWESEN__V1__MELDEREGISTER__AB_SERVICE);
    fflush(stdout);
    rc = ab_client_run(c, -1);
    s_serving = NULL;
    return rc == 0 ? 0 : 1;
}

/* ---- the caller ------------------------------------------------------------------------------ */

static int
s_call(ab_client_t *c, char *familienname, char *vorname)
{
    Meldewesen__V1__Name name = MELDEWESEN__V1__NAME__INIT;
    name.familienname = familienname;
    if (vorname) {
        name.n_vornamen = 1;
        name.vornamen = &vorname;
    }
    Meldewesen__V1__MeldebescheinigungAnfrage req =
        MELDEWESEN__V1__MELDEBESCHEINIGUNG_ANFRAGE__INIT;
    req.name = &name;
    req.anlass = "Beispiel";
    req.art = MELDEWESEN__V1__MELDEBESCHEINIGUNG_ANFRAGE__ART__EINFACH;
    ab_client_set_purpose(c, "BMG §18 (Beispiel)");

    Meldewesen__V1__Meldebescheinigung *mb = NULL; /* ours on success */
    int rc = meldewesen__v1__melderegister__meldebescheinigung__call(c, &req, &mb, 5000);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", ab_err_name(rc), ab_client_last_error(c));
        return 1;
    }
    printf("Aktenzeichen: %s\n", mb->aktenzeichen);
    if (mb->name)
        printf("Name: %s, %s\n", mb->name->familienname,
               mb->name->n_vornamen ? mb->name->vornamen[0] : "");
    if (mb->aktuelle_wohnung && mb->aktuelle_wohnung->anschrift) {
        const Meldewesen__V1__Anschrift *a = mb->aktuelle_wohnung->anschrift;
        printf("Anschrift: %s %s, %s %s\n", a->strasse, a->hausnummer, a->postleitzahl, a->wohnort);
    }
    if (mb->ausgestellt)
        printf("Ausgestellt: %lld von %s\n", (long long)mb->ausgestellt->seconds,
               mb->ausstellende_behoerde);
    meldewesen__v1__meldebescheinigung__free_unpacked(mb, NULL);
    return 0;
}

static int
s_usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --broker URI [--as PARTICIPANT | --cert F --key F --ca F]\n"
            "         serve | call FAMILIENNAME [VORNAME]\n",
            argv0);
    return 2;
}

int
main(int argc, char **argv)
{
    const char *broker = NULL, *as = NULL;
    ab_tls_options_t tls = {0};
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--broker") == 0)
            broker = argv[i + 1];
        else if (strcmp(argv[i], "--as") == 0)
            as = argv[i + 1];
        else if (strcmp(argv[i], "--cert") == 0)
            tls.cert = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0)
            tls.key = argv[i + 1];
        else if (strcmp(argv[i], "--ca") == 0)
            tls.ca = argv[i + 1];
        else
            return s_usage(argv[0]);
    }
    if (!broker || i >= argc)
        return s_usage(argv[0]);
    int serve = strcmp(argv[i], "serve") == 0;
    if (!serve && (strcmp(argv[i], "call") != 0 || i + 1 >= argc))
        return s_usage(argv[0]);

    ab_client_t *c = ab_client_new();
    if (!c)
        return 1;
    int rc = 0;
    if (as)
        rc = ab_client_set_participant(c, as);
    if (rc == 0 && tls.cert)
        rc = ab_client_set_tls(c, &tls);
    if (rc == 0)
        rc = ab_client_connect(c, broker, 5000);
    if (rc != 0) {
        fprintf(stderr, "connect %s: %s: %s\n", broker, ab_err_name(rc), ab_client_last_error(c));
        ab_client_destroy(&c);
        return 1;
    }
    int status = serve ? s_serve(c) : s_call(c, argv[i + 1], i + 2 < argc ? argv[i + 2] : NULL);
    ab_client_destroy(&c);
    return status;
}
