"""A real, throwaway PostgreSQL 15 server for the tests: initdb into a temp
directory, pg_ctl on a Unix socket in it (no TCP, no system service), run as
user postgres when the tests run as root (initdb refuses root)."""
import os
import pwd
import shutil
import subprocess
import tempfile

PG_BIN = "/usr/lib/postgresql/15/bin"
USER = "prefixd"  # the cluster's superuser, trusted on the socket


def available():
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return True


class Postgres:
    def __init__(self, port):
        self.port = port
        # short: a socket path is at most 107 bytes
        self.dir = tempfile.mkdtemp(prefix="pd-pg-", dir="/tmp")
        self.data = os.path.join(self.dir, "data")
        self.as_user = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", USER, "--no-sync",
                  "-E", "UTF8", "--locale", "C")
        self.start()

    def _run(self, tool, *args, check=True):
        p = subprocess.run(self.as_user + [os.path.join(PG_BIN, tool), *args],
                           capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"{tool} exited {p.returncode}: {p.stdout}{p.stderr}")
        return p

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-o",
                  f"-k {self.dir} -p {self.port} -c listen_addresses=''", "start")

    def stop(self):
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)

    def url(self, db="postgres", password=None):
        auth = USER + (f":{password}" if password else "")
        return f"postgresql://{auth}@/{db}?host={self.dir}&port={self.port}"

    def psql(self, sql, db="postgres"):
        p = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
                            self.url(db)], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"psql {sql}: {p.stderr}")
        return p.stdout.strip()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
