"""Generate a small, deterministic customer-support dataset of prompt/completion pairs.

Each line of the output is a JSON object ``{"prompt": ..., "completion": ...}``: a customer-style question
(orders, late deliveries, returns, refunds, shipping times/costs/international/tracking, product sizing,
materials, warranty, compatibility, stock, password/account, payments, cancellations) and a short agent
answer that repeats the prompt's details (order number, product, city, ...) and states a consistent policy.

Dirty rows are planted at fixed, evenly spaced positions so data cleaning has something to report:
``rows // 150`` exact duplicates, ``rows // 300`` empty or whitespace-only completions and ``rows // 500``
rows with leading/trailing whitespace. Stdlib only; the same arguments write byte-identical output.

Usage, from the repository root (``--seed`` 0, ``--rows`` 3000, ``--out`` studies/data/support.jsonl)::

    python scripts/make_support_data.py
"""

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "studies" / "data" / "support.jsonl"

# fmt: off
# name -> (material, warranty years)
PRODUCTS = {
    "Alder crewneck sweater": ("100% merino wool", 1), "Nimbus rain jacket": ("recycled nylon", 1),
    "Trailline running tee": ("quick-dry recycled polyester", 1), "Harbor linen shirt": ("European linen", 1),
    "Ridge softshell vest": ("fleece-lined stretch nylon", 1), "Cloudsoft hoodie": ("cotton fleece", 1),
    "Pulse wireless headset": ("matte plastic with memory-foam cushions", 2),
    "Orbit phone case": ("shock-absorbing TPU", 1), "Volt power bank": ("anodized aluminum", 2),
    "Beacon smart speaker": ("fabric-wrapped recycled plastic", 2),
    "Glide wireless charger": ("aluminum and tempered glass", 2), "Cove ceramic mug": ("stoneware", 1),
    "Ember desk lamp": ("powder-coated steel", 2), "Drift throw blanket": ("cotton and bamboo viscose", 1),
}
# apparel -> size shift we recommend (+1: runs small, -1: runs large)
FIT = {"Alder crewneck sweater": 0, "Nimbus rain jacket": -1, "Trailline running tee": 1,
       "Harbor linen shirt": 0, "Ridge softshell vest": 1, "Cloudsoft hoodie": -1}
COMPAT = {
    "Pulse wireless headset": "connects over Bluetooth, so it works with the {device}",
    "Orbit phone case": "comes in a version made for the {device}; pick it from the model menu",
    "Volt power bank": "charges the {device} over USB-C with the included cable",
    "Beacon smart speaker": "pairs with the {device} over Bluetooth or Wi-Fi",
    "Glide wireless charger": "supports Qi charging, which the {device} uses",
}
SIZES = ["XS", "S", "M", "L", "XL", "XXL"]
DEVICES = ["iPhone 15", "iPhone 14", "iPhone 13", "Galaxy S24", "Galaxy S23", "Pixel 8", "Pixel 7"]
CITIES = ["Denver", "Austin", "Seattle", "Boston", "Chicago", "Portland", "Atlanta", "Phoenix", "Miami",
          "San Diego", "Nashville", "Minneapolis", "Pittsburgh", "Raleigh", "Salt Lake City"]
COUNTRIES = ["Canada", "Mexico", "the UK", "Germany", "France", "Australia", "Japan", "Ireland", "Spain",
             "the Netherlands", "New Zealand", "Sweden"]
CARRIERS = ["UPS", "FedEx", "USPS", "DHL"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
PAYMENTS = ["Visa", "Mastercard", "American Express", "PayPal", "Apple Pay", "Google Pay", "a gift card"]
NAMES = ["maria", "james", "priya", "tom", "aisha", "chen", "lucas", "emma", "omar", "sofia", "noah", "grace"]
GREETINGS = ["Hi, ", "Hello, ", "Hey there, ", "Good morning, ", "Hi team, ", "", "", ""]
CLOSINGS = ["", "", " Thanks!", " Thank you.", " Thanks in advance.", " Appreciate the help."]
OPENERS = ["", "", "Thanks for reaching out! ", "Happy to help. ", "Thanks for contacting us. "]
BLANKS = ["", " ", "  ", "\n", "\t"]  # empty / whitespace-only completions
PADS = [("  ", "", "", ""), ("", " ", "", ""), ("", "", " ", "\n"), ("\t", "", "", " ")]  # (pl, pr, cl, cr)
# fmt: on

# "# intent" starts an intent, "P " is a customer prompt, "A " an agent answer. Answers use only slots that
# every prompt of the intent mentions, or facts the agent supplies (carrier, tracking, restock date, ...).
TEMPLATES = """
# order_status
P where is my order {order}? It was supposed to arrive {day}.
P can you tell me the status of order {order}? I placed it on {date}.
P I ordered the {product} on {date} (order {order}) and haven't heard anything since.
P my order {order} still says processing. When will it ship?
A Order {order} shipped with {carrier} and should arrive within {n} business days.
A Order {order} is on its way with {carrier}. You can follow it with tracking number {tracking}.
A Order {order} is packed and ships within 24 hours; {carrier} will email you a tracking link.
# late_delivery
P my package for order {order} was due {day} but it never showed up in {city}.
P order {order} is {n} days late and the tracking hasn't updated since {day}.
P I was told the {product} would arrive {day}, but nothing yet. Order {order}.
A I'm sorry order {order} is late. If it hasn't arrived in 3 business days, we will send a free replacement.
A Sorry for the wait. I've opened a trace with {carrier} for order {order}; if it is lost we will reship it.
# returns
P how do I return the {product} from order {order}? It doesn't fit.
P I'd like to return the {product} from order {order}. I bought it on {date}.
P can I return the {product} from order {order} if I already opened it?
P I got the wrong color {product} in order {order}. How do I send it back?
A You can return the {product} within 30 days of delivery. I've emailed a prepaid label for order {order}.
A Returns are accepted within 30 days if the item is undamaged. Open order {order} and choose Return Item.
# refunds
P I returned order {order} on {date}. When will I get my {amount} back?
P where is my refund of {amount} for order {order}? I sent it back last {day}.
P how long until the {amount} refund for order {order} shows up on my card?
A Your refund of {amount} for order {order} was approved and should post within 5-7 business days.
A We refund within 2 business days of receiving a return; banks take 5-7 business days to show {amount}.
# damaged
P my {product} arrived damaged. Order {order}. What can I do?
P the {product} in order {order} was broken right out of the box. What are my options?
P I received order {order} today but the box was crushed and the {product} is scratched.
A I'm sorry the {product} arrived damaged. I've sent a free replacement for order {order}.
A Sorry about that! Reply with a photo and we will ship a new {product} or refund order {order} in full.
# shipping_time
P how long does shipping usually take to {city}? I'm thinking of placing an order.
P if I order the {product} today, when would it get to {city}?
P what are your delivery times to {city}? I need something by {day}.
A Standard shipping to {city} takes 3-5 business days, and express takes 1-2 business days.
A Most orders reach {city} in 3-5 business days. Choose express at checkout for 1-2 day delivery.
# shipping_cost
P how much is shipping on an order of {amount}?
P do you offer free shipping? My cart is {amount} right now.
P what will shipping cost to {city}? My order comes to {amount}.
A {ship_note}. Express shipping is a flat $14.99 if you need it faster.
A Standard shipping is free on orders of $50 or more and $5.99 otherwise. {ship_note}.
# international
P do you ship to {country}? I want to order the {product}.
P how long does international shipping to {country} usually take?
P I live in {country}. Will I have to pay customs fees on my order?
A Yes, we ship to {country}. Delivery takes 7-14 business days and costs $19.99; duties are extra.
A We ship to {country} with {carrier} in 7-14 business days. Import duties are collected on delivery.
# tracking
P my {carrier} tracking number {tracking} for order {order} isn't working.
P the tracking for order {order} ({tracking}) has said label created since {day}.
P how can I track order {order}? I never got a tracking email.
A Order {order} ships with {carrier}, tracking number {tracking}. New labels can take 24 hours to scan.
A Track order {order} on the {carrier} website with number {tracking}. I've also resent the email.
# sizing
P what size {apparel} should I get? I usually wear size {size}.
P does the {apparel} run small or large? I'm usually a size {size}.
P I wear size {size} in most brands. Which size of the {apparel} should I order?
A The {apparel} {fit}. The size chart on the product page lists exact measurements.
A Our {apparel} {fit}. If the fit is off, exchanges are free within 30 days.
# materials
P what is the {item} made of? I like to know before I buy.
P I'm allergic to some materials. What is the {item} made of?
P can you tell me what material the {item} uses?
A The {item} is made of {material}. Care instructions are listed on the product page.
A Our {item} uses {material}. Let me know if you need any other details before you order.
# warranty
P what warranty does the {item} have? I want to be sure before buying.
P my {item} stopped working after {n} months. Is it covered under warranty?
P is there a warranty on the {item} I bought on {date}?
A The {item} has a {warranty}-year warranty against defects. Send your order number and we will help.
A Yes, the {item} has a {warranty}-year warranty from delivery. Reply with a photo to start a claim.
# compatibility
P will the {gadget} work with my {device}?
P is the {gadget} compatible with my {device}? I don't want to buy the wrong thing.
P can I use the {gadget} with my {device}? Just checking before I order.
A Yes, the {gadget} {compat}.
A The {gadget} {compat}. If it doesn't suit you, returns are free within 30 days.
# stock
P is the {item} back in stock yet? It has been sold out for a while.
P when will the {item} be available again?
P the {item} shows sold out. Are you restocking it?
A The {item} is expected back by {date}. Tap Notify Me on the product page for an email alert.
A We are restocking the {item} around {date}. You can sign up for a back-in-stock alert.
# password
P I forgot my password and the reset email never arrives. My email is {email}.
P I can't log in to my account ({email}). How do I reset my password?
P my account {email} is locked after too many login attempts. Can you help?
A I've sent a new reset link to {email}; it is valid for 1 hour. Please check your spam folder too.
A A fresh reset link is on its way to {email}. Locked accounts also unlock after 30 minutes.
# account
P how do I change the email on my account to {email}?
P I have a new email address, {email}. Can you update my account?
P please switch my login email to {email}, I no longer use the old one.
A You can change it under Account Settings, then Email. We will send a confirmation link to {email}.
A Done! Your account email is now {email}. Please click the confirmation link we just sent there.
# address
P I moved to {city}. How do I update my shipping address?
P can you change the default address on my account to my new place in {city}?
A Edit saved addresses under Account Settings and set your {city} address as the default for new orders.
A Welcome to {city}! Add the new address in Account Settings; open orders keep their original address.
# payment_methods
P what payment methods do you accept? Can I use {payment}?
P can I pay with {payment} for the {product}?
P do you take {payment}, or only credit cards?
A Yes, you can pay with {payment}. Every major credit card and digital wallet works at checkout too.
A Absolutely, {payment} works at checkout. The Payments page lists every method we accept.
# payment_declined
P my payment with {payment} keeps getting declined at checkout. What's wrong?
P I tried to pay {amount} with {payment} and got an error. Can you help?
A Declines usually mean a billing address mismatch or a bank hold. Check your {payment} details and retry.
A Sorry for the trouble. Nothing was charged; confirm the billing address for {payment} and try again.
# double_charge
P I was charged twice for order {order}. Can you fix it?
P my card shows two charges of {amount} for order {order}.
A I see two holds of {amount} for order {order}. Only one was captured; the other drops off in 3-5 days.
A Order {order} was charged once. The second {amount} is a temporary hold your bank releases in 3-5 days.
# cancel
P can I cancel order {order}? I placed it on {date}.
P please cancel my order {order}, I ordered the wrong {product}.
P I need to cancel order {order} before it ships. Is it too late?
A Order {order} hasn't shipped, so I've cancelled it. Your {amount} refund posts within 5-7 business days.
A Order {order} has already shipped, so it can't be cancelled, but you can return it within 30 days.
A Done! Order {order} is cancelled and a confirmation email is on its way to you.
"""
PROMPT_WORDS, COMPLETION_WORDS = (10, 40), (10, 50)
MAX_CHARS = 400  # prompt + completion: keeps a row well inside a 128-token block
APOLOGIES = ("I'm sorry", "Sorry")


def parse_templates(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """Parse TEMPLATES into {intent: (prompt templates, answer templates)}."""
    intents: dict[str, tuple[list[str], list[str]]] = {}
    for line in text.strip().splitlines():
        if line.startswith("# "):
            prompts, answers = intents[line[2:]] = ([], [])
        else:
            (prompts if line.startswith("P ") else answers).append(line[2:])
    return intents


INTENTS = parse_templates(TEMPLATES)


def make_slots(rng: random.Random) -> dict[str, str]:
    """Draw one consistent set of slot values; derived slots (fit, compat, ship_note) agree with them."""
    item, apparel, gadget = rng.choice(sorted(PRODUCTS)), rng.choice(sorted(FIT)), rng.choice(sorted(COMPAT))
    size_i, shift = rng.randint(1, 4), FIT[apparel]  # S..XL, so a one-size shift stays inside SIZES
    size, rec = SIZES[size_i], SIZES[size_i + shift]
    feel = {0: "fits true to size", 1: "runs slightly small", -1: "runs a little large"}[shift]
    fit = f"{feel}, so we suggest size {rec}" + (f" rather than your usual {size}" if shift else "")
    dollars = rng.randint(12, 240)
    amount = f"${dollars}.{rng.choice(['00', '49', '95', '99'])}"
    ship_note = f"Your {amount} order ships free" if dollars >= 50 else f"Your {amount} order ships for $5.99"
    device = rng.choice(DEVICES)
    return {
        "order": rng.choice("ABCDEFGHJK") + f"{rng.randrange(10**7):07d}",
        "product": rng.choice(sorted(PRODUCTS)),
        "item": item,
        "material": PRODUCTS[item][0],
        "warranty": str(PRODUCTS[item][1]),
        "apparel": apparel,
        "size": size,
        "fit": fit,
        "gadget": gadget,
        "device": device,
        "compat": COMPAT[gadget].format(device=device),
        "city": rng.choice(CITIES),
        "country": rng.choice(COUNTRIES),
        "carrier": rng.choice(CARRIERS),
        "tracking": str(rng.randrange(10**11, 10**12)),
        "day": rng.choice(DAYS),
        "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        "n": str(rng.randint(2, 6)),
        "amount": amount,
        "ship_note": ship_note,
        "payment": rng.choice(PAYMENTS),
        "email": f"{rng.choice(NAMES)}{rng.randint(1, 99)}@example.com",
    }


def make_row(rng: random.Random) -> dict[str, str]:
    """One clean prompt/completion pair for a random intent."""
    prompts, answers = INTENTS[rng.choice(sorted(INTENTS))]
    slots = make_slots(rng)
    greeting, body = rng.choice(GREETINGS), rng.choice(prompts).format(**slots)
    prompt = greeting + (body if greeting else body[0].upper() + body[1:]) + rng.choice(CLOSINGS)
    answer, opener = rng.choice(answers).format(**slots), rng.choice(OPENERS)
    return {"prompt": prompt, "completion": answer if answer.startswith(APOLOGIES) else opener + answer}


def is_valid(row: dict[str, str]) -> bool:
    """Word-count and length bounds for one clean row."""
    p_words, c_words = len(row["prompt"].split()), len(row["completion"].split())
    return (
        PROMPT_WORDS[0] <= p_words <= PROMPT_WORDS[1]
        and COMPLETION_WORDS[0] <= c_words <= COMPLETION_WORDS[1]
        and len(row["prompt"]) + len(row["completion"]) <= MAX_CHARS
    )


def clean_rows(rng: random.Random, count: int) -> list[dict[str, str]]:
    """``count`` valid rows with pairwise-distinct prompts."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < count:
        row = make_row(rng)
        if is_valid(row) and row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def spread(count: int, n: int, offset: int = 0) -> list[int]:
    """``count`` evenly spaced indices in ``range(n)``, shifted by ``offset``."""
    return [((2 * k + 1) * n // (2 * count) + offset) % n for k in range(count)]


def build(seed: int, total: int) -> list[dict[str, str]]:
    """``total`` rows: clean rows plus dirty rows planted at fixed, evenly spaced positions."""
    n_dup, n_blank, n_pad = total // 150, total // 300, total // 500
    rows = clean_rows(random.Random(seed), total - n_dup)
    blank_at, pad_at = spread(n_blank, len(rows)), spread(n_pad, len(rows), offset=7)
    for k, i in enumerate(blank_at):
        rows[i] = {"prompt": rows[i]["prompt"], "completion": BLANKS[k % len(BLANKS)]}
    for k, i in enumerate(pad_at):
        pl, pr, cl, cr = PADS[k % len(PADS)]
        rows[i] = {"prompt": pl + rows[i]["prompt"] + pr, "completion": cl + rows[i]["completion"] + cr}
    # Exact duplicates: after row i, repeat the first clean (not blanked or padded) row from i - 40 on.
    dirty, dup_after = set(blank_at) | set(pad_at), set(spread(n_dup, len(rows), offset=20))
    out: list[dict[str, str]] = []
    for i, row in enumerate(rows):
        out.append(row)
        if i in dup_after:
            out.append(dict(rows[next(j for j in range(max(i - 40, 0), i + 1) if j not in dirty)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--rows", type=int, default=3000, help="total rows, dirty included (default: 3000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path (default: %(default)s)")
    args = parser.parse_args()
    rows = build(args.seed, args.rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
