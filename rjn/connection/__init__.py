"""The link to a remote: every command, rsync and tunnel of rjn rides on one of these.

Two kinds, one interface (`Connection`): `master.py`, an OpenSSH ControlMaster per host (the
usual one: the user's ssh multiplexes); `single.py`, one ssh session held by a small rjn
process, for ssh clients that cannot multiplex (Windows' OpenSSH). What rides on them (rjn's
helper and its actions) is helper_client's; these know ssh only.
"""

from rjn.connection.master import RIDE_MASTER, Connection, explain, master_pid_at

__all__ = ["RIDE_MASTER", "Connection", "explain", "master_pid_at"]
