"""Draw the course diagrams (PNG) into the folder that holds this script.

Run:  python img/make_diagrams.py

Only matplotlib is needed (Agg backend, no display). Every figure is drawn
on an axis whose data units are inches, so sizes and positions below read
directly as inches on the page.

Writes:
  rlhf_three_stages.png  RLHF's three stages: preference data -> reward model -> PPO
  reward_model.png       reward model architecture (last-token head + gated log-prob
                         term) and its Bradley-Terry training on pairs
  rl_loop.png            RLHF seen as reinforcement learning (agent, state, action, reward)
  sft_vs_rlhf.png        data formats: supervised fine-tuning vs RLHF preferences
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DPI = 150

# ----------------------------------------------------------------------------
# Palette: one colour per kind of thing, the same in every figure.
# ----------------------------------------------------------------------------
TEXT = "#1A202C"
MUTED = "#4A5568"
ARROW = "#2D3748"

DATA = dict(fc="#DCEBFA", ec="#2B6CB0")      # prompts, completions, datasets
MODEL = dict(fc="#DFF3E4", ec="#2F855A")     # the trainable language model / policy
REWARD = dict(fc="#FDEBD3", ec="#C05621")    # reward model and its scores
HUMAN = dict(fc="#FDE2E4", ec="#C53030")     # human labeler / preferences
TRAIN = dict(fc="#EDE4F7", ec="#6B46C1")     # losses and optimisation steps
FROZEN = dict(fc="#EDF2F7", ec="#4A5568")    # frozen reference model
PANEL = dict(fc="#FAFBFC", ec="#CBD5E0")     # background panels

plt.rcParams.update({
    "font.family": "DejaVu Sans",
    "font.size": 11,
    "text.color": TEXT,
    "mathtext.fontset": "dejavusans",
})


# ----------------------------------------------------------------------------
# Small drawing helpers
# ----------------------------------------------------------------------------
def new_canvas(width, height):
    """Figure whose axis spans the whole page with 1 data unit = 1 inch."""
    fig = plt.figure(figsize=(width, height), facecolor="white")
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def box(ax, cx, cy, w, h, text="", style=DATA, fontsize=11, weight="normal",
        lw=1.6, rounding=0.12, ls="-", color=TEXT, zorder=2, ha="center"):
    """Rounded box centred on (cx, cy) with (multi-line) text inside."""
    patch = FancyBboxPatch(
        (cx - w / 2, cy - h / 2), w, h,
        boxstyle=f"round,pad=0,rounding_size={rounding}",
        fc=style["fc"], ec=style["ec"], lw=lw, ls=ls, zorder=zorder,
    )
    ax.add_patch(patch)
    if text:
        tx = cx if ha == "center" else cx - w / 2 + 0.15
        ax.text(tx, cy, text, ha=ha, va="center", fontsize=fontsize,
                fontweight=weight, color=color, zorder=zorder + 1,
                linespacing=1.35)
    return patch


def panel(ax, x0, y0, w, h, title, subtitle=None):
    """Light background panel with a bold title at its top."""
    ax.add_patch(FancyBboxPatch(
        (x0, y0), w, h, boxstyle="round,pad=0,rounding_size=0.2",
        fc=PANEL["fc"], ec=PANEL["ec"], lw=1.2, zorder=0))
    ax.text(x0 + w / 2, y0 + h - 0.32, title, ha="center", va="center",
            fontsize=15, fontweight="bold", color=TEXT, zorder=1)
    if subtitle:
        ax.text(x0 + w / 2, y0 + h - 0.68, subtitle, ha="center", va="center",
                fontsize=10.5, style="italic", color=MUTED, zorder=1)


def arrow(ax, start, end, color=ARROW, lw=1.8, rad=0.0, style="-|>",
          mutation=16, ls="-", zorder=4, shrink=0):
    """Arrow from start to end (data coords), optionally curved."""
    a = FancyArrowPatch(
        start, end, arrowstyle=style, mutation_scale=mutation,
        connectionstyle=f"arc3,rad={rad}", color=color, lw=lw, ls=ls,
        zorder=zorder, shrinkA=shrink, shrinkB=shrink)
    ax.add_patch(a)
    return a


def label(ax, x, y, text, fontsize=10, color=MUTED, ha="center", va="center",
          style="normal", weight="normal", bg=None, zorder=5, rotation=0):
    """Free text; optional white background so it sits cleanly on arrows."""
    kw = {}
    if bg:
        kw["bbox"] = dict(boxstyle="round,pad=0.15", fc=bg, ec="none")
    ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color=color,
            style=style, fontweight=weight, zorder=zorder, linespacing=1.3,
            rotation=rotation, **kw)


def save(fig, name):
    path = os.path.join(HERE, name)
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)
    print("wrote", os.path.relpath(path))


# ----------------------------------------------------------------------------
# 1. RLHF in three stages
# ----------------------------------------------------------------------------
def draw_three_stages():
    W, H = 19.5, 8.6
    fig, ax = new_canvas(W, H)
    ax.text(W / 2, H - 0.35, "RLHF in three stages", ha="center",
            va="center", fontsize=19, fontweight="bold")

    pw, ph, py = 5.9, 7.72, 0.25          # panel width/height/bottom
    gap = (W - 3 * pw) / 4
    xs = [gap + i * (pw + gap) for i in range(3)]

    # ---------------- Stage 1: preference dataset ----------------
    x0 = xs[0]
    cx = x0 + pw / 2
    panel(ax, x0, py, pw, ph, "1  Preference dataset",
          "humans compare completions")

    box(ax, cx, 6.75, 5.0, 0.62,
        'Prompt:  "What is the capital of France?"', DATA, fontsize=11.5)
    arrow(ax, (cx, 6.44), (cx, 6.06))
    box(ax, cx, 5.75, 3.2, 0.6, "Language model\nsamples several completions",
        MODEL, fontsize=10.5)

    comps = [("A", '"Paris."'),
             ("B", '"The capital of France is Paris."'),
             ("C", '"Ugh, obviously Paris."')]
    cy0 = 4.85
    for i, (tag, txt) in enumerate(comps):
        y = cy0 - i * 0.58
        box(ax, cx, y, 4.7, 0.46, f"{tag}   {txt}", DATA, fontsize=10.5,
            ha="left")
    arrow(ax, (cx, 5.45), (cx, 5.1))

    # labeler compares a pair
    hy = 2.35
    arrow(ax, (cx, cy0 - 2 * 0.58 - 0.25), (cx, hy + 0.55))
    box(ax, cx, hy, 5.0, 1.0, "", HUMAN)
    label(ax, cx, hy + 0.25, "Labeler compares two:  A  vs  B", fontsize=11.5,
          color=TEXT, weight="bold")
    label(ax, cx, hy - 0.2, "picks B  (B ≻ A)   —  a pair, not a score",
          fontsize=10.5, color=TEXT)

    arrow(ax, (cx, hy - 0.52), (cx, 1.42))
    box(ax, cx, 1.0, 5.0, 0.78,
        "Dataset of (prompt, chosen, rejected)\n"
        "e.g.  (France?,  B,  A)", DATA, fontsize=10.5, weight="normal")

    # ---------------- Stage 2: reward model ----------------
    x0 = xs[1]
    cx = x0 + pw / 2
    panel(ax, x0, py, pw, ph, "2  Reward model",
          "supervised learning on preference pairs")

    box(ax, cx, 6.75, 5.0, 0.62, "(prompt,  chosen  $y_w$,  rejected  $y_l$)",
        DATA, fontsize=11.5)
    # two branches into the same reward model (shared weights)
    arrow(ax, (cx - 1.0, 6.44), (cx - 1.0, 5.92))
    arrow(ax, (cx + 1.0, 6.44), (cx + 1.0, 5.92))
    label(ax, cx - 1.0, 6.18, "x, $y_w$", fontsize=10, ha="right", bg=PANEL["fc"])
    label(ax, cx + 1.0, 6.18, "x, $y_l$", fontsize=10, ha="left", bg=PANEL["fc"])
    box(ax, cx, 5.35, 4.2, 1.1,
        "Reward model  $r_\\theta(x, y)$\n(LM with a scalar head)", REWARD,
        fontsize=12, weight="bold")

    arrow(ax, (cx - 1.0, 4.8), (cx - 1.0, 4.27))
    arrow(ax, (cx + 1.0, 4.8), (cx + 1.0, 4.27))
    box(ax, cx - 1.0, 3.98, 1.75, 0.56, "$r(x, y_w)$", REWARD, fontsize=12)
    box(ax, cx + 1.0, 3.98, 1.75, 0.56, "$r(x, y_l)$", REWARD, fontsize=12)

    arrow(ax, (cx - 1.0, 3.7), (cx - 0.4, 3.27))
    arrow(ax, (cx + 1.0, 3.7), (cx + 0.4, 3.27))
    box(ax, cx, 2.7, 5.0, 1.1, "", TRAIN)
    label(ax, cx, 3.0, "Bradley–Terry loss", fontsize=11, color=TEXT,
          weight="bold")
    label(ax, cx, 2.65, "$\\mathcal{L} = -\\log\\,\\sigma\\,(r(x,y_w) - r(x,y_l))$",
          fontsize=12.5, color=TEXT)
    label(ax, cx, 2.33, "each step widens  r(chosen) − r(rejected)",
          fontsize=9.5, style="italic")

    arrow(ax, (cx, 2.15), (cx, 1.42), color=MUTED)
    label(ax, cx + 0.12, 1.78, "after training", fontsize=9.5, ha="left")
    box(ax, cx, 1.0, 5.0, 0.78,
        "Output: one scalar per (prompt, completion)\n"
        "e.g.  r = +1.7   (higher = preferred)", REWARD, fontsize=10.5)

    # ---------------- Stage 3: PPO ----------------
    x0 = xs[2]
    cx = x0 + pw / 2
    panel(ax, x0, py, pw, ph, "3  Fine-tune with PPO",
          "the reward model stands in for the human")

    box(ax, cx, 6.75, 5.0, 0.62, 'Prompt dataset   e.g. "Explain gravity."',
        DATA, fontsize=11)
    arrow(ax, (cx - 1.1, 6.44), (cx - 1.1, 5.86))

    lx, rx = cx - 1.25, cx + 1.4
    lw_, rw_ = 2.4, 2.25
    box(ax, lx, 5.45, lw_, 0.82, "Policy  $\\pi_\\theta$\n(the LM, trainable)",
        MODEL, fontsize=11, weight="bold")
    box(ax, rx, 5.45, rw_, 0.82, "Reference  $\\pi_{ref}$\n(original LM, frozen)",
        FROZEN, fontsize=10.5, ls="--")

    arrow(ax, (lx, 5.04), (lx, 4.42))
    label(ax, lx + 0.1, 4.73, "writes", fontsize=9.5, ha="left")
    box(ax, lx, 4.12, lw_, 0.56, "completion  y", DATA, fontsize=11)

    arrow(ax, (lx, 3.84), (lx, 3.22))
    label(ax, lx + 0.1, 3.53, "scored by", fontsize=9.5, ha="left")
    box(ax, lx, 2.9, lw_, 0.62, "Reward model\n$r(x, y)$", REWARD,
        fontsize=10.5)

    # KL penalty: how far the policy drifted from the frozen reference
    box(ax, rx, 3.55, rw_, 0.9,
        "KL penalty\n$\\beta\\,\\mathrm{KL}(\\pi_\\theta\\,\\|\\,\\pi_{ref})$",
        FROZEN, fontsize=10.5)
    arrow(ax, (rx, 5.04), (rx, 4.0), color=MUTED, ls="--")
    arrow(ax, (lx + lw_ / 2, 4.0), (rx - rw_ / 2, 3.75), color=MUTED, ls="--")

    box(ax, cx + 0.15, 1.85, 4.7, 0.62,
        "total reward  =  r(x, y)  −  $\\beta$ · KL", REWARD, fontsize=11)
    arrow(ax, (lx, 2.59), (lx, 2.17))
    arrow(ax, (rx, 3.1), (rx, 2.17), color=MUTED)

    box(ax, cx + 0.15, 0.85, 4.7, 0.62, "PPO update of the policy", TRAIN,
        fontsize=11.5, weight="bold")
    arrow(ax, (cx + 0.15, 1.54), (cx + 0.15, 1.17))
    # loop back to the policy, routed along the panel's left edge
    loop_x = x0 + 0.22
    purple = TRAIN["ec"]
    ax.plot([cx + 0.15 - 2.35, loop_x, loop_x], [0.85, 0.85, 5.45],
            color=purple, lw=2.0, zorder=4, solid_capstyle="round")
    arrow(ax, (loop_x, 5.45), (lx - lw_ / 2, 5.45), color=purple, lw=2.0)
    label(ax, loop_x, 3.0, "repeat", fontsize=10, color=purple,
          weight="bold", bg=PANEL["fc"], rotation=90)

    # ---------------- arrows between stages ----------------
    for i in range(2):
        xa = xs[i] + pw + 0.04
        xb = xs[i + 1] - 0.04
        arrow(ax, (xa, 4.3), (xb, 4.3), lw=3.0, mutation=26)

    save(fig, "rlhf_three_stages.png")


# ----------------------------------------------------------------------------
# 2. The reward model
# ----------------------------------------------------------------------------
def draw_reward_model():
    W, H = 15.0, 7.2
    fig, ax = new_canvas(W, H)
    ax.text(W / 2, H - 0.38, "The reward model", ha="center", va="center",
            fontsize=19, fontweight="bold")

    # ---- left panel: architecture ----
    x0, pw, py, ph = 0.3, 7.6, 0.3, 6.1
    panel(ax, x0, py, pw, ph, "Architecture",
          "prompt + completion in, one number out")

    # token strip
    tokens = ["What", "is", "the", "capital", "of", "France", "?", "Paris", ".",
              "<eos>"]
    kinds = ["p"] * 7 + ["c"] * 3
    tw, tg = 0.64, 0.05
    total = len(tokens) * tw + (len(tokens) - 1) * tg
    tx0 = x0 + (pw - total) / 2 + tw / 2
    ty = 1.45
    centers = []
    for i, (t, k) in enumerate(zip(tokens, kinds)):
        x = tx0 + i * (tw + tg)
        centers.append(x)
        box(ax, x, ty, tw, 0.5, t, DATA if k == "p" else MODEL,
            fontsize=14 if t in "?." else 9.5, rounding=0.08)
    # brackets: prompt / completion
    p_left, p_right = centers[0] - tw / 2, centers[6] + tw / 2
    c_left, c_right = centers[7] - tw / 2, centers[-1] + tw / 2
    for (l, r, txt, col) in [(p_left, p_right, "prompt  x", DATA["ec"]),
                             (c_left, c_right, "completion  y", MODEL["ec"])]:
        ax.plot([l, l, r, r], [1.08, 1.0, 1.0, 1.08], color=col, lw=1.5)
        label(ax, (l + r) / 2, 0.8, txt, fontsize=10, color=col,
              weight="bold")

    # transformer block
    tb_y, tb_h = 2.95, 1.5
    tb_l = centers[0] - tw / 2
    tb_r = centers[-1] + tw / 2
    box(ax, (tb_l + tb_r) / 2, tb_y, tb_r - tb_l, tb_h, "", MODEL, rounding=0.15)
    label(ax, (tb_l + tb_r) / 2, tb_y + 0.35, "Transformer", fontsize=14,
          color=TEXT, weight="bold")
    label(ax, (tb_l + tb_r) / 2, tb_y - 0.15,
          "initialised from the base LM: hidden state $h_t$ at every token",
          fontsize=10.5, color=TEXT)
    for x in centers:
        arrow(ax, (x, ty + 0.27), (x, tb_y - tb_h / 2 - 0.02), lw=1.2,
              mutation=11)

    # two heads on the completion's hidden states, summed into one number
    hy, hh = 4.55, 1.0
    h_l, h_r = centers[3] - tw / 2, tb_r
    for x in centers[7:]:
        arrow(ax, (x, tb_y + tb_h / 2), (x, hy - hh / 2 - 0.02), lw=1.5,
              mutation=12)
    box(ax, (h_l + h_r) / 2, hy, h_r - h_l, hh, "", REWARD)
    label(ax, h_l + 0.15, hy + 0.22,
          "$w^\\top h_T + b$    linear head, last token",
          fontsize=10, color=TEXT, ha="left")
    label(ax, h_l + 0.15, hy - 0.22,
          "$+\\ \\sum_t\\ g_t\\, a_t$    LM log-prob $a_t$ × gate $g_t \\geq 0$",
          fontsize=10, color=TEXT, ha="left")
    rx_c = (tb_l + centers[3] - tw / 2) / 2 - 0.05
    box(ax, rx_c, hy, 1.75, 0.56, "", REWARD)
    label(ax, rx_c, hy, "$r(x, y) = 1.7$", fontsize=12.5, color=TEXT)
    arrow(ax, (h_l - 0.02, hy), (rx_c + 0.9, hy), lw=1.8)
    label(ax, rx_c, hy - 0.52, "one number", fontsize=10, style="italic")
    label(ax, (tb_l + tb_r) / 2, 5.38,
          "default: both terms; plain model (read_log_probs=False): the first alone",
          fontsize=9.5, style="italic")

    # ---- right panel: training on pairs ----
    x1, pw2 = 8.2, 6.5
    panel(ax, x1, py, pw2, ph, "Training on pairs",
          "same reward model scores both completions")
    cx = x1 + pw2 / 2
    lx, rx = cx - 1.55, cx + 1.55

    box(ax, lx, 4.85, 2.9, 0.72,
        "x + chosen  $y_w$\n\"The capital of France is Paris.\"",
        DATA, fontsize=9.5)
    box(ax, rx, 4.85, 2.9, 0.72, "x + rejected  $y_l$\n\"Ugh, obviously Paris.\"",
        DATA, fontsize=9.5)
    arrow(ax, (lx, 4.48), (lx, 4.08))
    arrow(ax, (rx, 4.48), (rx, 4.08))
    box(ax, cx, 3.75, 5.6, 0.6, "reward model  $r_\\theta$   (shared weights)",
        REWARD, fontsize=11, weight="bold")
    arrow(ax, (lx, 3.44), (lx, 3.05))
    arrow(ax, (rx, 3.44), (rx, 3.05))
    box(ax, lx, 2.78, 2.0, 0.5, "r(chosen) = 1.7", REWARD, fontsize=10.5)
    box(ax, rx, 2.78, 2.0, 0.5, "r(rejected) = −0.4", REWARD, fontsize=10.5)
    arrow(ax, (lx, 2.52), (cx - 0.5, 2.0))
    arrow(ax, (rx, 2.52), (cx + 0.5, 2.0))

    box(ax, cx, 1.5, 5.6, 0.95, "", TRAIN)
    label(ax, cx, 1.75, "Bradley–Terry loss", fontsize=11, color=TEXT,
          weight="bold")
    label(ax, cx, 1.32,
          "$\\mathcal{L} = -\\log\\,\\sigma\\,(r(\\mathrm{chosen}) - r(\\mathrm{rejected}))$",
          fontsize=12, color=TEXT)
    label(ax, cx, 0.68,
          "minimising it widens the gap  r(chosen) − r(rejected)",
          fontsize=10, style="italic")

    save(fig, "reward_model.png")


# ----------------------------------------------------------------------------
# 3. RLHF as reinforcement learning
# ----------------------------------------------------------------------------
def draw_rl_loop():
    W, H = 13.6, 7.6
    fig, ax = new_canvas(W, H)
    ax.text(W / 2, H - 0.5, "RLHF as reinforcement learning", ha="center",
            va="center", fontsize=19, fontweight="bold")

    # four stations around a cycle
    agent = (3.0, 5.55)
    env = (10.6, 5.55)
    reward = (10.6, 1.95)
    update = (3.0, 1.95)
    bw, bh = 4.0, 1.45
    mid = W / 2

    def station(xy, style, title, sub, sub_size=10.5):
        box(ax, *xy, bw, bh, "", style, lw=2)
        label(ax, xy[0], xy[1] + 0.3, title, fontsize=13, color=TEXT,
              weight="bold")
        label(ax, xy[0], xy[1] - 0.25, sub, fontsize=sub_size, color=TEXT)

    station(agent, MODEL, "Agent = policy  $\\pi_\\theta$",
            "the language model being tuned")
    station(env, REWARD, "Environment = reward model",
            "appends the token; when the\ncompletion ends, scores it")
    station(reward, REWARD, "Reward",
            "$r(x, y)\\;-\\;\\beta\\,\\mathrm{KL}(\\pi_\\theta\\,\\|\\,\\pi_{ref})$",
            sub_size=12.5)
    station(update, TRAIN, "Policy update",
            "PPO step on $\\pi_\\theta$ (clipped objective)")

    # agent -> env : action ; env -> agent : new state
    ay, sy = env[1] + 0.3, env[1] - 0.3
    arrow(ax, (agent[0] + bw / 2, ay), (env[0] - bw / 2, ay), lw=2.2,
          mutation=20)
    label(ax, mid, ay + 0.28, "Action = the next token", fontsize=12,
          color=TEXT, weight="bold")
    arrow(ax, (env[0] - bw / 2, sy), (agent[0] + bw / 2, sy), lw=2.2,
          mutation=20, color=DATA["ec"])
    label(ax, mid, sy - 0.5, "State = context so far\n(prompt + tokens generated)",
          fontsize=11, color=DATA["ec"], weight="bold")

    # env -> reward (right)
    arrow(ax, (env[0], env[1] - bh / 2), (reward[0], reward[1] + bh / 2),
          lw=2.2, mutation=20)
    label(ax, env[0] + 0.15, (env[1] + reward[1]) / 2,
          "score of the\nwhole completion", fontsize=10, ha="left",
          style="italic")

    # reference policy feeding the KL term
    ref = (mid, 3.05)
    box(ax, *ref, 2.7, 0.85,
        "Reference policy $\\pi_{ref}$\n(frozen copy, for the KL term)",
        FROZEN, fontsize=10, ls="--")
    arrow(ax, (ref[0] + 1.35, ref[1]), (reward[0] - bw / 2, reward[1] + 0.45),
          color=MUTED, ls="--", lw=1.6)

    # reward -> update (bottom)
    arrow(ax, (reward[0] - bw / 2, reward[1] - 0.2),
          (update[0] + bw / 2, update[1] - 0.2), lw=2.2, mutation=20)
    label(ax, mid, reward[1] - 0.5, "reward signal", fontsize=10.5,
          style="italic")

    # update -> agent (left)
    arrow(ax, (update[0], update[1] + bh / 2), (agent[0], agent[1] - bh / 2),
          lw=2.2, mutation=20, color=TRAIN["ec"])
    label(ax, update[0] - 0.15, (agent[1] + update[1]) / 2, "new weights",
          fontsize=10, ha="right", style="italic")

    label(ax, W / 2, 0.45,
          "One episode = one completion: the agent emits tokens one by one, "
          "the reward arrives at the end.",
          fontsize=10.5, color=MUTED)

    save(fig, "rl_loop.png")


# ----------------------------------------------------------------------------
# 4. Data formats: SFT vs RLHF
# ----------------------------------------------------------------------------
def draw_sft_vs_rlhf():
    W, H = 12.0, 5.4
    fig, ax = new_canvas(W, H)
    ax.text(W / 2, H - 0.38, "What one training example looks like",
            ha="center", va="center", fontsize=17, fontweight="bold")

    # left: SFT
    x0, pw, py, ph = 0.3, 5.3, 0.3, 4.4
    panel(ax, x0, py, pw, ph, "Supervised fine-tuning",
          "learn to copy a reference answer")
    cx = x0 + pw / 2
    box(ax, cx, 2.95, 4.5, 0.75, "", DATA)
    label(ax, cx, 3.12, "input text", fontsize=12, color=TEXT, weight="bold")
    label(ax, cx, 2.8, "\"The city council met on Monday to ...\"",
          fontsize=9.5, style="italic")
    box(ax, cx, 1.85, 4.5, 0.75, "", MODEL)
    label(ax, cx, 2.02, "summary", fontsize=12, color=TEXT, weight="bold")
    label(ax, cx, 1.7, "\"Council approves new budget.\"", fontsize=9.5,
          style="italic")
    label(ax, cx, 0.8, "{ input text,  summary }", fontsize=12, color=TEXT,
          weight="bold")

    # right: RLHF
    x1, pw2 = 6.1, 5.6
    panel(ax, x1, py, pw2, ph, "RLHF (preference data)",
          "learn which answer people prefer")
    cx = x1 + pw2 / 2
    box(ax, cx, 3.3, 4.9, 0.72, "", DATA)
    label(ax, cx, 3.47, "input text", fontsize=12, color=TEXT, weight="bold")
    label(ax, cx, 3.15, "\"The city council met on Monday to ...\"",
          fontsize=9.5, style="italic")
    lx, rx = cx - 1.27, cx + 1.27
    box(ax, lx, 2.42, 2.35, 0.72, "", MODEL)
    label(ax, lx, 2.59, "summary 1", fontsize=11.5, color=TEXT, weight="bold")
    label(ax, lx, 2.27, "\"Budget approved.\"", fontsize=9, style="italic")
    box(ax, rx, 2.42, 2.35, 0.72, "", MODEL)
    label(ax, rx, 2.59, "summary 2", fontsize=11.5, color=TEXT, weight="bold")
    label(ax, rx, 2.27, "\"Council met Monday.\"", fontsize=9, style="italic")
    box(ax, cx, 1.57, 4.9, 0.55, "human preference:  1 ≻ 2   (1 is better)",
        HUMAN, fontsize=11.5, weight="bold")
    label(ax, cx, 0.8, "{ input text,  summary 1,  summary 2,  preference }",
          fontsize=11, color=TEXT, weight="bold")

    save(fig, "sft_vs_rlhf.png")


def main():
    draw_three_stages()
    draw_reward_model()
    draw_rl_loop()
    draw_sft_vs_rlhf()


if __name__ == "__main__":
    main()
