#!/usr/bin/env bash
# Amtsbote development PKI: a root CA, an issuing CA, broker and participant certificates, a CRL,
# and the certificates that must fail, made with the `openssl` command alone (OpenSSL 3).
# For development and tests only: keys are not encrypted. Run `pki.sh --help` for everything.
set -euo pipefail

PROG=${0##*/}
ROOT_DAYS=3650
ISSUING_DAYS=1825
LEAF_DAYS=365
CRL_DAYS=30
URI_PREFIX=urn:amtsbote:participant:
ORG="Amtsbote Development"

usage() {
  cat <<EOF
Usage: $PROG COMMAND DIR [ARGS...]

Builds a development PKI for Amtsbote with the openssl command. Not for production: keys are
stored unencrypted (mode 0600) and the CAs live on the same disk as everything else.

Commands:
  init DIR [--curve prime256v1|brainpoolP256r1] [--force]
      Makes a root CA (self-signed, 10 years) and an issuing CA signed by it (5 years,
      pathlen:0) in DIR/ca/, with an openssl 'ca' database for each, and an empty CRL.
      The curve (default prime256v1) is used for every key of this PKI; brainpoolP256r1
      needs OpenSSL 3.2 or later for TLS 1.3 (OpenSSL 3.0 uses it over TLS 1.2 only).
      Refuses to touch an existing DIR/ca unless --force, which deletes it (and so every CA
      key) first.
      Writes DIR/ca/root.crt, DIR/ca/issuing.crt, DIR/ca/chain.pem (issuing + root),
      DIR/ca/crl.pem, DIR/ca/root.key and DIR/ca/issuing.key (0600).

  broker DIR NAME [--dns HOST]... [--ip ADDR]... [--days N] [--force]
      A TLS server certificate for the broker, signed by the issuing CA: extendedKeyUsage
      serverAuth, keyUsage digitalSignature, subjectAltName from --dns and --ip (default:
      DNS:localhost and IP:127.0.0.1). Writes DIR/NAME.crt and DIR/NAME.key.

  issue DIR PARTICIPANT [--days N] [--force]
      A client certificate for a participant, signed by the issuing CA: exactly one
      subjectAltName URI $URI_PREFIX<PARTICIPANT>, extendedKeyUsage clientAuth,
      keyUsage digitalSignature, subject CN=PARTICIPANT (the broker never reads the CN).
      PARTICIPANT is 2 to 8 dot-separated segments of lower-case letters, digits, '-' and '_',
      each starting with a letter or digit, at most 255 characters.
      Writes DIR/PARTICIPANT.crt and DIR/PARTICIPANT.key.

  revoke DIR PARTICIPANT|NAME
      Revokes every still-valid certificate the issuing CA issued for that participant address
      (or, for a broker NAME, DIR/NAME.crt). Publish the revocation with 'crl'.

  crl DIR [--days N]
      Writes DIR/ca/crl.pem: the issuing CA's CRL followed by the root CA's CRL (a verifier that
      checks CRLs for the whole chain needs both), valid for N days (default $CRL_DAYS; run it
      again before then, or every verifier refuses every certificate). Also writes them singly
      as DIR/ca/issuing.crl.pem and DIR/ca/root.crl.pem. init and bad run it too.

  bad DIR [--force]
      Makes the client certificates that a broker must refuse, in DIR/bad/, each as NAME.crt
      and NAME.key, and then rewrites the CRL:
        expired           validity ended yesterday
        not-yet-valid     validity starts tomorrow
        other-ca          signed by a throwaway CA that is not in the chain
        revoked           issued, then revoked (listed in DIR/ca/crl.pem)
        serverauth-only   extendedKeyUsage serverAuth only
        no-san-uri        only a DNS subjectAltName (CN still looks like an address)
        two-san-uris      two participant URIs
        malformed-address URI ${URI_PREFIX}Bad..Name
        wildcard          URI ${URI_PREFIX}kommune.*
      Apart from these faults they look like good participant certificates (test.<NAME>).
      Refuses to touch an existing DIR/bad unless --force.

Options:
  --force      overwrite what the command would otherwise refuse to replace
  --days N     validity of a broker or participant certificate (default $LEAF_DAYS) or of
               the CRL (default $CRL_DAYS)
  -h, --help   this text

Every command prints the files it wrote. Exit status: 0 done, 1 failed, 2 usage error.

Examples:
  $PROG init pki
  $PROG broker pki broker --dns broker.example.org --dns localhost --ip 127.0.0.1
  $PROG issue pki bund.bmi
  $PROG issue pki kommune.09162000.meldeamt
  $PROG revoke pki bund.bmi && $PROG crl pki
  $PROG bad pki

  amtsbote-broker --listen tls://0.0.0.0:7443 --tls-cert pki/broker.crt \\
    --tls-key pki/broker.key --tls-ca pki/ca/chain.pem --tls-crl pki/ca/crl.pem
  amtsbote --broker tls://localhost:7443 --cert pki/bund.bmi.crt --key pki/bund.bmi.key \\
    --ca pki/ca/chain.pem status

  openssl verify -CAfile pki/ca/chain.pem -crl_check_all -CRLfile pki/ca/crl.pem \\
    -purpose sslclient pki/bund.bmi.crt

See certs/README.md for the file layout and for using an agency's real PKI instead.
EOF
}

die_usage() {
  echo "$PROG: $*" >&2
  echo "$PROG: see '$PROG --help'" >&2
  exit 2
}
die() {
  echo "$PROG: $*" >&2
  exit 1
}

command -v openssl >/dev/null 2>&1 ||
  die "the 'openssl' command is not installed (Debian: apt-get install openssl)"

WORK=""
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT
work() {
  [ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/amtsbote-pki.XXXXXX")
}

# ossl WHAT ARGS...: runs openssl quietly; on failure shows its output and names WHAT.
ossl() {
  local what=$1 out
  shift
  if ! out=$(openssl "$@" 2>&1); then
    printf '%s\n' "$out" | sed 's/^/  openssl: /' >&2
    die "openssl failed while $what"
  fi
}

# ossl_ca WHAT ARGS...: 'openssl ca' inside DIR/ca, whose openssl.cnf uses relative paths.
ossl_ca() {
  local what=$1 out
  shift
  if ! out=$(cd "$CA" && openssl ca -config openssl.cnf -batch "$@" 2>&1); then
    printf '%s\n' "$out" | sed 's/^/  openssl: /' >&2
    die "openssl ca failed while $what"
  fi
}

# check_address ADDR: the participant address rule of the broker (common/wire.c).
check_address() {
  local a=$1 seg='[a-z0-9][a-z0-9_-]*'
  if [ ${#a} -gt 255 ] || ! [[ $a =~ ^$seg(\.$seg){1,7}$ ]]; then
    die_usage "participant address '$a' is not of the form level.org[.unit]: 2 to 8" \
      "dot-separated segments of lower-case letters, digits, '-' and '_', each starting with" \
      "a letter or digit (e.g. bund.bmi, kommune.09162000.meldeamt)"
  fi
}

# check_name WHAT NAME: a name that becomes a file name in DIR.
check_name() {
  if ! [[ $2 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || [ ${#2} -gt 200 ]; then
    die_usage "$1 '$2' must be letters, digits, '.', '-' and '_', starting with a letter or digit"
  fi
}

# set_dir DIR: absolute paths for DIR and DIR/ca.
set_dir() {
  [ -n "$1" ] || die_usage "DIR is empty"
  DIR=$1
  case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
  DIR=${DIR%/}
  CA=$DIR/ca
}

# need_ca: DIR/ca must hold a PKI made by init.
need_ca() {
  local f
  for f in openssl.cnf curve issuing.crt issuing.key root.crt root.key issuing/index.txt; do
    [ -f "$CA/$f" ] || die "$CA/$f is missing: run '$PROG init ${DIR_ARG}' first"
  done
  CURVE=$(cat "$CA/curve")
}

# newkey FILE: an EC key on $CURVE, mode 0600.
newkey() {
  local old
  old=$(umask)
  umask 077
  rm -f "$1"
  ossl "making the key $1" genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:$CURVE" \
    -pkeyopt ec_param_enc:named_curve -out "$1"
  umask "$old"
  chmod 600 "$1"
}

# csr KEY SUBJECT OUT
csr() {
  ossl "making a certificate request for $2" req -new -key "$1" -subj "$2" -config "$CA/openssl.cnf" \
    -out "$3"
}

# utc OFFSET: a date for 'openssl ca -startdate/-enddate' (GeneralizedTime), e.g. utc '-1 day'.
utc() { date -u -d "$1" +%Y%m%d%H%M%SZ; }

# leaf_ext FILE EKU SAN...: an extension section [leaf] for an end-entity certificate.
leaf_ext() {
  local f=$1 eku=$2 san
  shift 2
  san=$(
    IFS=,
    echo "$*"
  )
  {
    echo "[ leaf ]"
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid:always"
    # The subject is never empty, so subjectAltName is not critical (RFC 5280 4.2.1.6).
    [ -z "$san" ] || echo "subjectAltName = $san"
  } >"$f"
}

# sign_leaf CRT KEY CN EKU SAN... [-- CA_ARGS...]: key, request and certificate from the issuing
# CA. CA_ARGS go to 'openssl ca' (e.g. -startdate/-enddate); default -days $DAYS.
sign_leaf() {
  local crt=$1 key=$2 cn=$3 eku=$4 sans=() extra=()
  shift 4
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    sans+=("$1")
    shift
  done
  [ $# -eq 0 ] || { shift; extra=("$@"); }
  [ ${#extra[@]} -gt 0 ] || extra=(-days "$DAYS")
  work
  local tag
  tag=$(basename "$crt" .crt)
  newkey "$WORK/$tag.key"
  csr "$WORK/$tag.key" "/O=$ORG/CN=$cn" "$WORK/$tag.csr"
  leaf_ext "$WORK/$tag.ext" "$eku" "${sans[@]}"
  ossl_ca "signing $crt" -name issuing_ca -notext -preserveDN -in "$WORK/$tag.csr" \
    -out "$WORK/$tag.crt" -extfile "$WORK/$tag.ext" -extensions leaf "${extra[@]}"
  mv -f "$WORK/$tag.key" "$key"
  mv -f "$WORK/$tag.crt" "$crt"
}

# refuse_existing FILE...: stop unless --force when one of them exists.
refuse_existing() {
  local f
  [ "$FORCE" = 1 ] && return 0
  for f in "$@"; do
    [ ! -e "$f" ] || die "$f exists: use --force to replace it (a replaced certificate stays" \
      "valid until you revoke it)"
  done
}

cnf() {
  cat <<'EOF'
# openssl configuration of the Amtsbote development PKI, written by certs/pki.sh init.
# Paths are relative to this directory: run openssl from here, e.g.
#   openssl ca -config openssl.cnf -name issuing_ca -gencrl -out issuing.crl.pem

[ req ]
distinguished_name = req_dn
string_mask = utf8only
prompt = no

[ req_dn ]
CN = unused

[ ca ]
default_ca = issuing_ca

[ root_ca ]
dir = root
database = $dir/index.txt
serial = $dir/serial
crlnumber = $dir/crlnumber
new_certs_dir = $dir/certs
certificate = root.crt
private_key = root.key
default_md = sha256
default_days = 1825
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
crl_extensions = crl_ext
email_in_dn = no

[ issuing_ca ]
dir = issuing
database = $dir/index.txt
serial = $dir/serial
crlnumber = $dir/crlnumber
new_certs_dir = $dir/certs
certificate = issuing.crt
private_key = issuing.key
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
crl_extensions = crl_ext
email_in_dn = no

[ policy_any ]
organizationName = optional
commonName = supplied

[ crl_ext ]
authorityKeyIdentifier = keyid:always

[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ v3_issuing ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}

# new_db NAME: an empty openssl 'ca' database in DIR/ca/NAME/.
new_db() {
  mkdir -p "$CA/$1/certs"
  : >"$CA/$1/index.txt"
  echo "unique_subject = no" >"$CA/$1/index.txt.attr"
  # Random 128-bit start serial with the top bit clear; openssl ca counts up from it.
  printf '%s%s\n' "$((RANDOM % 8))" "$(openssl rand -hex 16 | cut -c2-)" >"$CA/$1/serial"
  echo 1000 >"$CA/$1/crlnumber"
}

write_crl() {
  ossl_ca "making the issuing CA's CRL" -name issuing_ca -gencrl -crldays "$CRL_DAYS" \
    -out issuing.crl.pem
  ossl_ca "making the root CA's CRL" -name root_ca -gencrl -crldays "$CRL_DAYS" \
    -out root.crl.pem
  cat "$CA/issuing.crl.pem" "$CA/root.crl.pem" >"$CA/crl.pem.tmp"
  mv -f "$CA/crl.pem.tmp" "$CA/crl.pem"
}

# ---- commands ----

cmd_init() {
  if [ -e "$CA" ]; then
    [ "$FORCE" = 1 ] || die "$CA exists: refusing to overwrite a CA (use --force to delete it" \
      "and start again; every certificate it issued becomes worthless)"
    rm -rf "$CA"
  fi
  mkdir -p "$CA"
  cnf >"$CA/openssl.cnf"
  echo "$CURVE" >"$CA/curve"
  new_db root
  new_db issuing

  newkey "$CA/root.key"
  ossl "making the root CA $CA/root.crt" req -x509 -new -key "$CA/root.key" \
    -subj "/O=$ORG/CN=Amtsbote Dev Root CA" -days "$ROOT_DAYS" -sha256 \
    -config "$CA/openssl.cnf" -extensions v3_root -set_serial "0x$(openssl rand -hex 16 | cut -c2-)" \
    -out "$CA/root.crt"

  work
  newkey "$CA/issuing.key"
  csr "$CA/issuing.key" "/O=$ORG/CN=Amtsbote Dev Issuing CA" "$WORK/issuing.csr"
  ossl_ca "signing the issuing CA $CA/issuing.crt" -name root_ca -notext -preserveDN \
    -days "$ISSUING_DAYS" -extensions v3_issuing -in "$WORK/issuing.csr" -out issuing.crt
  cat "$CA/issuing.crt" "$CA/root.crt" >"$CA/chain.pem"
  write_crl

  echo "root CA          $CA/root.crt   (key $CA/root.key)"
  echo "issuing CA       $CA/issuing.crt   (key $CA/issuing.key)"
  echo "CA chain         $CA/chain.pem   (issuing + root: --tls-ca / --ca)"
  echo "CRL              $CA/crl.pem   (issuing + root, nothing revoked: --tls-crl)"
  echo "curve            $CURVE"
}

cmd_broker() {
  local name=$1
  check_name "broker NAME" "$name"
  need_ca
  local crt=$DIR/$name.crt key=$DIR/$name.key
  refuse_existing "$crt" "$key"
  [ ${#SANS[@]} -gt 0 ] || SANS=(DNS:localhost IP:127.0.0.1)
  sign_leaf "$crt" "$key" "$name" serverAuth "${SANS[@]}"
  echo "broker cert      $crt   (${SANS[*]})"
  echo "broker key       $key"
}

cmd_issue() {
  local addr=$1
  check_address "$addr"
  need_ca
  local crt=$DIR/$addr.crt key=$DIR/$addr.key
  refuse_existing "$crt" "$key"
  sign_leaf "$crt" "$key" "$addr" clientAuth "URI:$URI_PREFIX$addr"
  echo "participant cert $crt   (URI:$URI_PREFIX$addr)"
  echo "participant key  $key"
}

# serials_for ADDR: serials of valid certificates of the issuing CA that carry the address.
serials_for() {
  local serial f
  # index.txt: status, expiry, revocation, serial, file, subject, tab-separated (some empty)
  while read -r serial; do
    f=$CA/issuing/certs/$serial.pem
    [ -f "$f" ] || continue
    if openssl x509 -in "$f" -noout -ext subjectAltName 2>/dev/null |
      tr ',' '\n' | sed 's/^ *//' | grep -qxF "URI:$URI_PREFIX$1"; then
      echo "$serial"
    fi
  done < <(awk -F'\t' '$1 == "V" { print $4 }' "$CA/issuing/index.txt")
}

cmd_revoke() {
  local who=$1 serial n=0
  check_name "PARTICIPANT or NAME" "$who"
  need_ca
  for serial in $(serials_for "$who"); do
    ossl_ca "revoking serial $serial ($who)" -name issuing_ca \
      -revoke "issuing/certs/$serial.pem"
    echo "revoked          serial $serial   ($URI_PREFIX$who)"
    n=$((n + 1))
  done
  if [ "$n" = 0 ] && [ -f "$DIR/$who.crt" ]; then
    serial=$(openssl x509 -in "$DIR/$who.crt" -noout -serial 2>/dev/null | sed 's/^serial=//') ||
      die "$DIR/$who.crt is not a certificate"
    awk -F'\t' -v s="$serial" '$1 == "V" && $4 == s { f = 1 } END { exit !f }' \
      "$CA/issuing/index.txt" ||
      die "$DIR/$who.crt (serial $serial) is not a valid certificate of this issuing CA" \
        "(already revoked, or from another CA)"
    ossl_ca "revoking $DIR/$who.crt" -name issuing_ca -revoke "$DIR/$who.crt"
    echo "revoked          serial $serial   ($DIR/$who.crt)"
    n=1
  fi
  [ "$n" -gt 0 ] || die "'$who': no valid certificate for this participant or broker in" \
    "$CA/issuing/index.txt (nothing revoked)"
  echo "now run          $PROG crl $DIR_ARG   (to publish it in $CA/crl.pem)"
}

cmd_crl() {
  need_ca
  write_crl
  local n
  n=$(grep -c '^R' "$CA/issuing/index.txt" || true)
  echo "CRL              $CA/crl.pem   (issuing CA: $n revoked; root CA; valid $CRL_DAYS days)"
}

cmd_bad() {
  need_ca
  local bad=$DIR/bad
  if [ -e "$bad" ]; then
    [ "$FORCE" = 1 ] || die "$bad exists: use --force to replace it"
    rm -rf "$bad"
  fi
  mkdir -p "$bad"
  local u=URI:$URI_PREFIX n
  DAYS=$LEAF_DAYS

  n=expired
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "test.$n" clientAuth "${u}test.$n" -- \
    -startdate "$(utc '-30 days')" -enddate "$(utc '-1 day')"
  n=not-yet-valid
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "test.$n" clientAuth "${u}test.$n" -- \
    -startdate "$(utc '+1 day')" -enddate "$(utc '+366 days')"
  n=revoked
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "test.$n" clientAuth "${u}test.$n"
  ossl_ca "revoking $bad/$n.crt" -name issuing_ca -revoke "$bad/$n.crt" -crl_reason keyCompromise
  n=serverauth-only
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "test.$n" serverAuth "${u}test.$n"
  n=no-san-uri
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "test.$n" clientAuth "DNS:$n.test"
  n=two-san-uris
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "test.$n" clientAuth "${u}test.first" "${u}test.second"
  n=malformed-address
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "Bad..Name" clientAuth "${u}Bad..Name"
  n=wildcard
  sign_leaf "$bad/$n.crt" "$bad/$n.key" "kommune.*" clientAuth "${u}kommune.*"

  # other-ca: a throwaway CA that exists only for this one signature; its key is thrown away.
  n=other-ca
  work
  newkey "$WORK/other.key"
  ossl "making the throwaway CA" req -x509 -new -key "$WORK/other.key" \
    -subj "/O=Untrusted/CN=Amtsbote Throwaway CA (not in the chain)" -days 30 -sha256 \
    -config "$CA/openssl.cnf" -extensions v3_root -out "$WORK/other.crt"
  newkey "$WORK/$n.key"
  csr "$WORK/$n.key" "/O=$ORG/CN=test.$n" "$WORK/$n.csr"
  leaf_ext "$WORK/$n.ext" clientAuth "${u}test.$n"
  ossl "signing $bad/$n.crt with the throwaway CA" x509 -req -in "$WORK/$n.csr" \
    -CA "$WORK/other.crt" -CAkey "$WORK/other.key" -set_serial "0x$(openssl rand -hex 16 | cut -c2-)" \
    -days "$LEAF_DAYS" -sha256 -extfile "$WORK/$n.ext" -extensions leaf -out "$WORK/$n.crt"
  mv -f "$WORK/$n.key" "$bad/$n.key"
  mv -f "$WORK/$n.crt" "$bad/$n.crt"

  write_crl
  echo "expired          $bad/expired.crt   (validity ended yesterday)"
  echo "not yet valid    $bad/not-yet-valid.crt   (validity starts tomorrow)"
  echo "other CA         $bad/other-ca.crt   (signed by a throwaway CA not in the chain)"
  echo "revoked          $bad/revoked.crt   (listed in $CA/crl.pem)"
  echo "serverAuth only  $bad/serverauth-only.crt   (no clientAuth)"
  echo "no SAN URI       $bad/no-san-uri.crt   (DNS:no-san-uri.test only)"
  echo "two SAN URIs     $bad/two-san-uris.crt   (test.first and test.second)"
  echo "malformed        $bad/malformed-address.crt   (${URI_PREFIX}Bad..Name)"
  echo "wildcard         $bad/wildcard.crt   (${URI_PREFIX}kommune.*)"
  echo "CRL              $CA/crl.pem   (rewritten)"
  echo "(each with its key beside it as NAME.key)"
}

# ---- argument parsing ----

[ $# -gt 0 ] || {
  usage >&2
  exit 2
}
case $1 in
  -h | --help | help)
    usage
    exit 0
    ;;
esac
COMMAND=$1
shift
case $COMMAND in
  init | broker | issue | revoke | crl | bad) ;;
  *) die_usage "unknown command '$COMMAND' (init, broker, issue, revoke, crl, bad)" ;;
esac

FORCE=0
CURVE=prime256v1
DAYS=$LEAF_DAYS
SANS=()
POS=()
while [ $# -gt 0 ]; do
  opt=$1
  case $opt in
    -h | --help)
      usage
      exit 0
      ;;
    --force) FORCE=1 ;;
    --curve | --dns | --ip | --days)
      [ $# -ge 2 ] || die_usage "$opt needs a value"
      val=$2
      shift
      case $opt in
        --curve)
          [ "$COMMAND" = init ] || die_usage "--curve is an option of 'init' only"
          case $val in
            prime256v1 | brainpoolP256r1) CURVE=$val ;;
            *) die_usage "--curve '$val': use prime256v1 or brainpoolP256r1" ;;
          esac
          ;;
        --dns)
          [ "$COMMAND" = broker ] || die_usage "--dns is an option of 'broker' only"
          [[ $val =~ ^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] ||
            die_usage "--dns '$val' is not a host name"
          SANS+=("DNS:$val")
          ;;
        --ip)
          [ "$COMMAND" = broker ] || die_usage "--ip is an option of 'broker' only"
          if ! [[ $val =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || $val =~ ^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$ ]]; then
            die_usage "--ip '$val' is not an IPv4 or IPv6 address"
          fi
          SANS+=("IP:$val")
          ;;
        --days)
          [[ $val =~ ^[1-9][0-9]{0,4}$ ]] || die_usage "--days '$val' is not a number of days"
          case $COMMAND in
            broker | issue) DAYS=$val ;;
            crl) CRL_DAYS=$val ;;
            *) die_usage "--days is an option of 'broker', 'issue' and 'crl' only" ;;
          esac
          ;;
      esac
      ;;
    -*) die_usage "unknown option '$opt' for '$COMMAND'" ;;
    *) POS+=("$opt") ;;
  esac
  shift
done

case $COMMAND in
  init | crl | bad) want=1 args="DIR" ;;
  broker) want=2 args="DIR NAME" ;;
  issue | revoke) want=2 args="DIR PARTICIPANT" ;;
esac
[ ${#POS[@]} -eq "$want" ] || die_usage "'$COMMAND' takes $args, got ${#POS[@]} argument(s):" \
  "${POS[*]:-(none)}"
case $COMMAND in init | bad) ;; *) [ "$FORCE" = 0 ] || [ "$COMMAND" = broker ] ||
  [ "$COMMAND" = issue ] || die_usage "--force is not an option of '$COMMAND'" ;; esac

DIR_ARG=${POS[0]}
set_dir "$DIR_ARG"
case $COMMAND in
  init) cmd_init ;;
  broker) cmd_broker "${POS[1]}" ;;
  issue) cmd_issue "${POS[1]}" ;;
  revoke) cmd_revoke "${POS[1]}" ;;
  crl) cmd_crl ;;
  bad) cmd_bad ;;
esac
