#!/usr/bin/env bash
# Make sure the servers the tests talk to answer on loopback: PostgreSQL
# (5432), MariaDB (3306) and Redis (6379). Each machine starts them before a
# session or CI run, but a server that a session stopped or restarted by hand
# (the restart tests do) may be gone by the next run: start whichever does not
# answer, with the same command the machine itself uses, and wait for it.
#   ./scripts/services.sh          # check, start what is missing, report
set -euo pipefail

answers() { # host port: true once something accepts a TCP connection there
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name port
    local i
    for i in $(seq 1 300); do
        if answers 127.0.0.1 "$2"; then
            echo "services: $1 answers on 127.0.0.1:$2"
            return 0
        fi
        sleep 0.1
    done
    echo "services: $1 did not start on 127.0.0.1:$2 within 30 s; see its log" >&2
    return 1
}

start_postgresql() {
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    if [ -z "$version" ]; then
        echo "services: PostgreSQL is not installed (no /etc/postgresql); install postgresql" >&2
        return 1
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

start_mariadb() {
    if [ ! -x /usr/sbin/mariadbd ]; then
        echo "services: MariaDB is not installed (no /usr/sbin/mariadbd); install mariadb-server" >&2
        return 1
    fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

start_redis() {
    if ! command -v redis-server >/dev/null; then
        echo "services: Redis is not installed; install redis-server" >&2
        return 1
    fi
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
}

ensure() { # name port start-function
    if answers 127.0.0.1 "$2"; then
        echo "services: $1 answers on 127.0.0.1:$2"
        return 0
    fi
    echo "services: $1 is not answering on 127.0.0.1:$2; starting it"
    "$3"
    wait_for "$1" "$2"
}

ensure PostgreSQL 5432 start_postgresql
ensure MariaDB 3306 start_mariadb
ensure Redis 6379 start_redis
