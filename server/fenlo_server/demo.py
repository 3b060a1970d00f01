"""The demo workspace `make run` creates: a small café with a knowledge base, so
the first chat shows grounded answers with citations."""

from __future__ import annotations

DEMO_DOCUMENT_TITLE = "Harbour Café guide"
DEMO_DOCUMENT = """# Harbour Café

Harbour Café is a small café and bakery at 14 Quay Street, Port Ellery, next to
the ferry terminal.

## Opening hours

We are open Monday to Friday from 7:30 to 18:00, and Saturday and Sunday from
9:00 to 16:00. We are closed on 25 December and 1 January.

## Menu and prices

- Espresso: £2.20; cappuccino or latte: £3.40.
- Fresh croissant: £2.50; almond croissant: £3.10.
- Breakfast plate (eggs, sourdough toast, tomatoes): £8.90, served until 11:30.
- Soup of the day with bread: £6.50, from 12:00.

Oat, soya and almond milk cost nothing extra. Gluten-free bread is available on
request.

## Reservations and groups

Tables for up to 6 people can be booked by phone on 01632 960 123 or by email at
hello@harbourcafe.example. Groups of more than 6 need a deposit of £20. We keep
booked tables for 15 minutes.

## Payment

We accept cards, Apple Pay and Google Pay. Cash is not accepted.

## Allergies

All our cakes are baked on site. Our kitchen handles nuts, gluten, milk and eggs,
so we cannot guarantee that any dish is free of them. Ask the staff for the
allergen list of each dish.

## Dogs and accessibility

Dogs on a lead are welcome on the terrace. The café has step-free access and an
accessible toilet.
"""
