"""The columns of the experiment's tables (``table``), apart from its axes': what each
table's rows hold, and the names an axis must not take (``plan`` refuses them; it cannot
import ``table``, which reads the plan)."""

from fedpeft.server.personal import MODELS

ID = ["run", "variant", "role", "seed"]
ROUND = [
    "stage",
    "round",
    "accuracy",
    "macro_f1",
    "eval_loss",
    "train_loss",
    "sampled",
    "accepted",
    "rejected",
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "bytes_up_per_client",
    "wall_time_s",
    "cum_wall_time_s",
    "client_time_s",
    "eval_time_s",
    "sim_time_s",
    "sim_clock_s",
    "client_train_time_mean_s",
    "client_train_time_max_s",
    "client_train_cpu_mean_s",
    "client_mem_rise_max_bytes",
    "client_peak_mem_max_bytes",
    "trainable_params",
    "full_model_bytes",
]
CLIENT = [
    "stage",
    "round",
    "client_id",
    "tier",
    "status",
    "group",
    "config",
    "num_examples",
    "bytes_up",
    "bytes_down",
    "train_time_s",
    "train_cpu_s",
    "mem_rise_bytes",
    "peak_mem_bytes",
    "sim_time_s",
    "loss",
]
RUN = [
    "state",
    "stages",
    "rounds_completed",
    "final_accuracy",
    "best_accuracy",
    "bytes_up_per_client_round",
    "up_fraction_of_full_model",
    "trainable_params",
    "full_model_bytes",
    "wall_time_s",
    "peak_rss_bytes",
    "folder",
    "error",
]
SCORE = [
    "stage",
    "round",
    "client_id",
    "group",
    "status",
    "num_test",
    *(f"{m}_accuracy" for m in MODELS),
    "personal_params",
]
COLUMNS = frozenset({*ID, *ROUND, *CLIENT, *RUN, *SCORE})  # an axis's name must be none of these
