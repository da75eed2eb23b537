"""Every name that crosses the wire between fedpeft's ServerApp and ClientApp, in one place.

Message contents are a Flower ``RecordDict``; these are its record names, the keys inside
those records, and the run-config / node-config keys the apps read.
"""

from __future__ import annotations

# ---- records inside a message's RecordDict --------------------------------------------
ARRAYS = "fedpeft.arrays"  # ArrayRecord: the adapter state (down: global, up: the update)
META = "fedpeft.meta"  # ConfigRecord: the payload's metadata (round, num_examples, metrics)
INSTRUCTION = "fedpeft.instruction"  # ConfigRecord: every TrainInstruction field
PROFILE = "fedpeft.profile"  # ConfigRecord: the client's measured ResourceProfile
DATA = "fedpeft.data"  # ConfigRecord: the client's DataProfile (counts only, no examples)
HELLO = "fedpeft.hello"  # ConfigRecord: the client's answer to the first-contact query
SECAGG = "fedpeft.secagg"  # ArrayRecord: one secure-aggregation stage's protocol message
# ---- records in a ClientApp's Context state (kept on the SuperNode, never in a message) --
SECRETS = "fedpeft.secagg-secrets"  # ArrayRecord: a secure-aggregation round's client secrets
KEPT = "fedpeft.kept"  # ArrayRecord: the client's kept states, keys ``<round:06d>/<key>``
KEPT_RUN = "fedpeft.kept-run"  # ConfigRecord: the run whose snapshot this Context consulted
KEPT_RUN_ID = "run_id"  # … its key: that run's id (the run folder's name)

# ---- keys inside those records ----------------------------------------------------------
META_JSON = "json"  # the payload metadata, a JSON object (fedpeft.compression's own)
INSTRUCTION_PREFIX = "ins."  # one JSON-encoded entry per TrainInstruction field
HELLO_PARTITION = "partition_id"
HELLO_NUM_EXAMPLES = "num_examples"
HELLO_PID = "pid"  # the answering process (for the model-load measurements)
HELLO_MODEL_LOADS = "model_loads"  # how many times that process has loaded the base model
HELLO_MODEL_LOAD_S = "model_load_s"  # seconds its (last) load took
HELLO_OWN_DATA = "own_data"  # 1 when the node trains on its own data file (node config)
SECAGG_MESSAGE = "message"  # the encoded message (privacy.secagg.messages), one uint8 array

# ---- run config (``[tool.flwr.app.config]`` / ``--run-config``) -------------------------
RUN_CONFIG_TOML = "fedpeft-config"  # a fedpeft config as TOML text ("" = the defaults)
RUN_SET = "fedpeft-set"  # `--set` overrides on top, separated by ";"
RUN_RESUME = "fedpeft-resume"  # a run folder to resume ("" = a new run)
RUN_ROUND_TIMEOUT = "round-timeout"  # seconds a round waits for replies
RUN_CONNECT_TIMEOUT = "connect-timeout"  # seconds the server waits for every client
RUN_CLIENT_WEIGHT = "client-weight"  # "assigned" | "reported": what bounds a client's weight
RUN_MAX_EXAMPLES = "max-client-examples"  # "reported": the cap on a claimed count (0 = none)

# ---- node config (``flower-supernode --node-config``) ------------------------------------
NODE_PARTITION = "partition-id"  # which client (data partition) this SuperNode is
NODE_UPLOAD = "upload-bps"  # declared bandwidth: it cannot be measured without a peer
NODE_DOWNLOAD = "download-bps"
NODE_HOST_SOCKET = "host-socket"  # the node's long-lived client host (host.py), if any
NODE_DATA_FILE = "data-file"  # the node's own CSV/TSV/JSONL (bring your own data), if any
NODE_TEXT_COLUMN = "text-column"  # … its text column (default: the run's data.text_column)
NODE_LABEL_COLUMN = "label-column"  # … its label column (default: data.label_column)
NODE_CLIENT_DIR_ENV = "FEDPEFT_CLIENT_DIR"  # environment: where a node's clients write files

# ---- message types -----------------------------------------------------------------------
TRAIN = "train"  # flwr.app.MessageType.TRAIN
QUERY = "query"  # flwr.app.MessageType.QUERY
EVALUATE = "evaluate"  # flwr.app.MessageType.EVALUATE: a client scores itself on its own data

DEFAULT_BANDWIDTH = "20 Mbps"
DEFAULT_ROUND_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 300.0
