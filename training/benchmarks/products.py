"""A small deterministic product catalog (about 500 items in 6 departments and 30 leaf
categories) with synthetic user histories, in the generic dataset format:

    interactions.csv  user_id,item_id,timestamp,rating
    items.jsonl       item_id, title, categories (["Department", "Leaf"]), brand, year, description

Titles and descriptions are put together from templates (brand x product noun x feature, or a
generated name for books and board games), so that text search over them means something:
"waterproof", "noise-cancelling", "vegan", "for kids", "time travel" each pick out a few items.
Two titles are deliberately shared by two items each ("The Last Lighthouse", a mystery and a
romance; "Dinosaur Island", a board game and a children's book) so that an ambiguous title exists.

Standard library only; the same seed gives the same files byte for byte. The request benchmark in
``understanding.jsonl`` names titles from the default seed (0).

    python -m training.benchmarks.products OUT_DIR [--seed N]
    thinkrec data build --dataset generic --interactions OUT_DIR/interactions.csv \\
        --items OUT_DIR/items.jsonl --out artifacts/products
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

YEARS = (2005, 2023)
N_USERS = 300
HISTORY = (8, 30)
MIN_PER_ITEM = 2
# Interactions happen after every release year: 2023-01-01 .. 2024-06-30 (UTC).
TIME_START, TIME_END = 1672531200, 1719705600

# Two titles shared by two items each (different brands, years and leaf categories).
SHARED_TITLES = [
    {"title": "The Last Lighthouse", "categories": ["Books", "Mystery"], "brand": "Northlight Books",
     "year": 2011,
     "description": "A cozy mystery in which a retired harbour pilot finds the lighthouse keeper "
                    "missing on the night of a storm. Short chapters and a twist nobody sees coming."},
    {"title": "The Last Lighthouse", "categories": ["Books", "Romance"], "brand": "Bramble & Finch",
     "year": 2019,
     "description": "A second-chance romance: an architect returns to her island hometown to restore "
                    "the old lighthouse and meets the boatbuilder she left behind."},
    {"title": "Dinosaur Island", "categories": ["Toys & Games", "Board Games"], "brand": "Meeple Works",
     "year": 2017,
     "description": "A worker-placement strategy board game for 1-4 players in which you build a "
                    "dinosaur theme park and keep the visitors from being eaten. Ages 12 and up."},
    {"title": "Dinosaur Island", "categories": ["Books", "Children's Books"], "brand": "Red Kite Publishing",
     "year": 2009,
     "description": "A picture book about two siblings who wash up on an island full of friendly "
                    "dinosaurs. Bright illustrations for ages 3 to 6."},
]

# ---- Products made as brand x feature x noun ------------------------------------------------------
# features: (word in the title, phrase after the noun in the description, nouns it fits or None)

MADE = [
    {"dept": "Electronics", "leaf": "Headphones", "n": 18, "since": 2008,
     "brands": ["Sonara", "Audiq", "Kestrel Audio", "Bluefin"],
     "nouns": {"Over-Ear Headphones": "over-ear headphones", "Earbuds": "true wireless earbuds",
               "On-Ear Headphones": "on-ear headphones", "Sport Earbuds": "sport earbuds"},
     "features": [("Wireless", "with Bluetooth 5.3 and up to 40 hours of battery life", None),
                  ("Noise-Cancelling", "with active noise cancelling that shuts out planes, trains and open offices", None),
                  ("Waterproof", "rated IPX7 waterproof, so rain and sweat are no problem", ["Sport Earbuds", "Earbuds"]),
                  ("Kids", "for kids, with an 85 dB volume limit and soft, bendable headband", ["On-Ear Headphones", "Over-Ear Headphones"]),
                  ("Studio", "for studio monitoring, with a flat, accurate sound and a detachable cable", ["Over-Ear Headphones"]),
                  ("Bass Boost", "with deep, punchy bass and a one-touch bass boost mode", None)],
     "extras": ["Folds flat and comes with a travel case.", "Includes a USB-C charging cable.",
                "Memory-foam cushions stay comfortable for hours.", "A built-in microphone handles calls clearly."]},
    {"dept": "Electronics", "leaf": "Laptops", "n": 16, "since": 2010,
     "brands": ["Corvid", "Lumatek", "Novabyte"],
     "nouns": {"Laptop": "a 15.6-inch laptop", "Ultrabook": "a 13-inch ultrabook", "Gaming Laptop": "a gaming laptop",
               "2-in-1 Laptop": "a 2-in-1 laptop that folds into a tablet", "Chromebook": "a Chromebook"},
     "features": [("Lightweight", "that weighs just 1.1 kg and slips into any bag", None),
                  ("Touchscreen", "with a bright touchscreen and stylus support", None),
                  ("Student", "for students, with all-day battery and a spill-resistant keyboard", ["Laptop", "Chromebook", "2-in-1 Laptop"]),
                  ("RTX", "with a dedicated RTX graphics card and a 165 Hz display", ["Gaming Laptop"]),
                  ("Business", "for business use, with a fingerprint reader and a privacy shutter", ["Laptop", "Ultrabook"]),
                  ("OLED", "with a vivid OLED display", None)],
     "extras": ["16 GB of memory and a fast 512 GB SSD.", "Backlit keyboard for late nights.",
                "Charges to 60 percent in 30 minutes.", "Ships with Wi-Fi 6 and two USB-C ports."]},
    {"dept": "Electronics", "leaf": "Cameras", "n": 16, "since": 2006,
     "brands": ["Optica", "Fotora", "Shutterline"],
     "nouns": {"Mirrorless Camera": "a mirrorless camera", "Action Camera": "an action camera",
               "Instant Camera": "an instant camera",
               "Compact Camera": "a compact point-and-shoot camera", "DSLR Camera": "a DSLR camera"},
     "features": [("4K", "that records 4K video at 60 frames per second", None),
                  ("Waterproof", "that is waterproof to 10 metres without a housing", ["Action Camera", "Compact Camera"]),
                  ("Vlogging", "for vlogging, with a flip-out screen and a directional microphone", ["Mirrorless Camera", "Compact Camera"]),
                  ("Beginner", "for beginners, with guided modes and a kit lens", ["DSLR Camera", "Mirrorless Camera"]),
                  ("Kids", "for kids, shockproof and easy to hold", ["Instant Camera", "Compact Camera"]),
                  ("Full-Frame", "with a full-frame sensor for low-light shooting", ["Mirrorless Camera", "DSLR Camera"])],
     "extras": ["Wi-Fi transfer to your phone.", "Image stabilisation keeps handheld shots sharp.",
                "Comes with a strap and a 64 GB card.", "The battery lasts a full day of shooting."]},
    {"dept": "Electronics", "leaf": "Smartwatches", "n": 15, "since": 2014,
     "brands": ["Pulsefit", "Tempo", "Orbit Wear"],
     "nouns": {"Smartwatch": "a smartwatch", "Fitness Tracker": "a slim fitness tracker",
               "GPS Running Watch": "a GPS running watch", "Kids Smartwatch": "a smartwatch for kids"},
     "features": [("Heart-Rate", "with continuous heart-rate and blood-oxygen tracking", None),
                  ("Waterproof", "that is waterproof to 50 metres and tracks swims", None),
                  ("Sleep-Tracking", "with sleep tracking and a gentle vibrating alarm", None),
                  ("Long-Battery", "with a battery that lasts two weeks", None),
                  ("GPS", "with built-in GPS so you can leave the phone at home", ["Smartwatch", "Kids Smartwatch"]),
                  ("Solar", "with solar charging for long hikes", ["GPS Running Watch", "Smartwatch"])],
     "extras": ["Shows texts and calls from your phone.", "Swappable silicone bands in three colours.",
                "Works with iPhone and Android.", "An always-on display is easy to read in sunlight."]},
    {"dept": "Electronics", "leaf": "Speakers", "n": 15, "since": 2008,
     "brands": ["Sonara", "Boomly", "Bluefin"],
     "nouns": {"Portable Speaker": "a portable Bluetooth speaker", "Smart Speaker": "a smart speaker",
               "Party Speaker": "a party speaker with light show", "Shower Speaker": "a little shower speaker",
               "Soundbar": "a soundbar for the TV"},
     "features": [("Waterproof", "that is waterproof and even floats in the pool", ["Portable Speaker", "Shower Speaker"]),
                  ("Wireless", "that streams over Bluetooth and Wi-Fi", None),
                  ("Voice-Controlled", "with a built-in voice assistant", ["Smart Speaker", "Soundbar"]),
                  ("Rugged", "built rugged and drop-proof for camping trips", ["Portable Speaker", "Party Speaker"]),
                  ("Mini", "small enough to clip on a backpack", ["Portable Speaker", "Shower Speaker"]),
                  ("Dolby Atmos", "with Dolby Atmos surround sound", ["Soundbar"])],
     "extras": ["Pair two for stereo sound.", "Plays for 20 hours on a charge.",
                "Room-filling sound with clear vocals.", "Charges over USB-C."]},
    # ---- Home & Kitchen
    {"dept": "Home & Kitchen", "leaf": "Coffee Makers", "n": 18, "since": 2005,
     "brands": ["Brewell", "Casa Moka", "Kettleworth", "Dawnbrew"],
     "nouns": {"Drip Coffee Maker": "a drip coffee maker", "Espresso Machine": "an espresso machine",
               "French Press": "a French press", "Pour-Over Coffee Set": "a pour-over coffee set",
               "Single-Serve Coffee Maker": "a single-serve coffee maker", "Cold Brew Maker": "a cold brew maker"},
     "features": [("Programmable", "that you can program the night before", ["Drip Coffee Maker", "Single-Serve Coffee Maker"]),
                  ("Stainless Steel", "made of brushed stainless steel", None),
                  ("12-Cup", "that brews 12 cups at a time", ["Drip Coffee Maker"]),
                  ("Compact", "compact enough for a dorm room or a small kitchen", None),
                  ("Milk Frother", "with a steam wand and milk frother for lattes and cappuccinos", ["Espresso Machine"]),
                  ("Thermal Carafe", "with a thermal carafe that keeps coffee hot for hours", ["Drip Coffee Maker", "French Press"]),
                  ("Glass", "made of heat-resistant borosilicate glass", ["French Press", "Pour-Over Coffee Set", "Cold Brew Maker"])],
     "extras": ["Dishwasher-safe parts make clean-up easy.", "Brews a full pot in under 10 minutes.",
                "Includes a reusable filter.", "Auto shut-off after two hours."]},
    {"dept": "Home & Kitchen", "leaf": "Cookware", "n": 18, "since": 2005,
     "brands": ["Ironhearth", "Cucina Viva", "Panworks"],
     "nouns": {"Frying Pan": "a 28 cm frying pan", "Cookware Set": "a 10-piece cookware set",
               "Dutch Oven": "a 5-quart Dutch oven", "Saucepan": "a 2-quart saucepan with lid",
               "Wok": "a 14-inch wok", "Cast Iron Skillet": "a pre-seasoned cast iron skillet"},
     "features": [("Nonstick", "with a PFOA-free nonstick coating", ["Frying Pan", "Cookware Set", "Saucepan", "Wok"]),
                  ("Stainless Steel", "in tri-ply stainless steel", ["Frying Pan", "Cookware Set", "Saucepan", "Wok"]),
                  ("Enameled", "in enameled cast iron that goes from stove to table", ["Dutch Oven", "Cast Iron Skillet"]),
                  ("Induction-Ready", "that works on induction, gas and electric hobs", None),
                  ("Ceramic", "with a ceramic coating free of PTFE", ["Frying Pan", "Cookware Set", "Saucepan"]),
                  ("Oven-Safe", "that is oven-safe to 260 C", None)],
     "extras": ["Stay-cool riveted handles.", "Heats evenly without hot spots.",
                "Dishwasher safe.", "Backed by a lifetime warranty."]},
    {"dept": "Home & Kitchen", "leaf": "Blenders", "n": 15, "since": 2005,
     "brands": ["Vortexa", "Brewell", "Greenspin"],
     "nouns": {"Blender": "a countertop blender", "Personal Blender": "a personal blender with to-go cups",
               "Immersion Blender": "a hand-held immersion blender", "Food Processor": "an 8-cup food processor"},
     "features": [("High-Speed", "with a 1400 W motor that crushes ice and frozen fruit", None),
                  ("Cordless", "that runs cordless on a rechargeable battery", ["Immersion Blender", "Personal Blender"]),
                  ("Quiet", "with a sound shield, quiet enough for early mornings", ["Blender"]),
                  ("Smoothie", "made for smoothies and protein shakes", ["Blender", "Personal Blender"]),
                  ("Compact", "compact enough to keep on the counter", None),
                  ("Stainless Steel", "with a stainless steel body and blades", None)],
     "extras": ["BPA-free jar.", "Pulse and three speed settings.", "Blades come out for cleaning.",
                "Recipe booklet included."]},
    {"dept": "Home & Kitchen", "leaf": "Bedding", "n": 16, "since": 2005,
     "brands": ["Cloudnest", "Linen & Loom", "Slumberly"],
     "nouns": {"Sheet Set": "a queen sheet set", "Duvet Cover Set": "a duvet cover set with two pillowcases",
               "Weighted Blanket": "a 7 kg weighted blanket", "Pillow": "a bed pillow",
               "Comforter": "an all-season comforter"},
     "features": [("Organic Cotton", "in soft organic cotton", None),
                  ("Cooling", "with a cooling weave for hot sleepers", None),
                  ("Hypoallergenic", "that is hypoallergenic and dust-mite resistant", None),
                  ("Linen", "in stonewashed French linen", ["Sheet Set", "Duvet Cover Set"]),
                  ("Kids", "for kids, printed with stars and rockets", ["Sheet Set", "Duvet Cover Set", "Weighted Blanket"]),
                  ("Memory Foam", "filled with shredded memory foam", ["Pillow"])],
     "extras": ["Machine washable.", "Available in six colours.", "Gets softer with every wash.",
                "Comes in a reusable cotton bag."]},
    {"dept": "Home & Kitchen", "leaf": "Vacuums", "n": 15, "since": 2008,
     "brands": ["Dustra", "Sweeply", "Cyclonix"],
     "nouns": {"Robot Vacuum": "a robot vacuum", "Cordless Stick Vacuum": "a cordless stick vacuum",
               "Handheld Vacuum": "a handheld vacuum", "Upright Vacuum": "an upright vacuum"},
     "features": [("Pet Hair", "that pulls pet hair out of carpets and upholstery", None),
                  ("Quiet", "that runs quietly, so it won't wake the baby", None),
                  ("HEPA", "with a sealed HEPA filter for allergy sufferers", None),
                  ("Self-Emptying", "with a self-emptying base", ["Robot Vacuum"]),
                  ("Mopping", "that vacuums and mops in one pass", ["Robot Vacuum"]),
                  ("Lightweight", "that weighs under 2.5 kg", ["Cordless Stick Vacuum", "Handheld Vacuum"])],
     "extras": ["Runs for 60 minutes on a charge.", "Bagless dust bin empties in one click.",
                "Includes crevice and brush tools.", "Washable, reusable filter."]},
    # ---- Sports & Outdoors
    {"dept": "Sports & Outdoors", "leaf": "Camping", "n": 20, "since": 2005,
     "brands": ["Trailmark", "Northpeak", "Campfire Co.", "Alpenwise"],
     "nouns": {"2-Person Tent": "a two-person dome tent", "Family Tent": "a six-person family tent",
               "Sleeping Bag": "a mummy sleeping bag", "Camping Stove": "a two-burner camping stove",
               "Headlamp": "a rechargeable headlamp", "Hammock": "a camping hammock",
               "Camping Lantern": "a camping lantern"},
     "features": [("Waterproof", "that is fully waterproof and shrugs off heavy rain", ["2-Person Tent", "Family Tent", "Headlamp", "Camping Lantern"]),
                  ("Ultralight", "that is ultralight for backpacking", ["2-Person Tent", "Sleeping Bag", "Hammock", "Camping Stove"]),
                  ("4-Season", "built for four seasons, with snow flaps and strong poles", ["2-Person Tent"]),
                  ("Winter", "rated to -10 C for winter camping", ["Sleeping Bag"]),
                  ("Solar", "that charges by solar panel", ["Camping Lantern", "Headlamp"]),
                  ("Easy-Setup", "that pops up in under two minutes", ["Family Tent", "2-Person Tent", "Hammock"]),
                  ("Kids", "sized for kids, in bright colours", ["Sleeping Bag", "Headlamp"])],
     "extras": ["Packs down small for the trail.", "Backed by a three-year warranty.",
                "Made from recycled materials.", "Great for festivals and car camping."]},
    {"dept": "Sports & Outdoors", "leaf": "Running Shoes", "n": 18, "since": 2005,
     "brands": ["Stridex", "Fleetfoot", "Kinetic", "Ridgerun"],
     "nouns": {"Running Shoes": "road running shoes", "Trail Running Shoes": "trail running shoes",
               "Racing Flats": "lightweight racing flats", "Walking Shoes": "everyday walking shoes"},
     "features": [("Women's", "for women, with a narrower heel", None),
                  ("Men's", "for men, in sizes up to 15", None),
                  ("Kids'", "for kids, with hook-and-loop straps", ["Running Shoes", "Walking Shoes"]),
                  ("Cushioned", "with max cushioning for long runs", None),
                  ("Waterproof", "with a waterproof membrane for wet trails", ["Trail Running Shoes", "Walking Shoes"]),
                  ("Vegan", "made vegan, with no animal materials", None),
                  ("Wide-Fit", "in a wide fit with a roomy toe box", None)],
     "extras": ["Breathable knit upper.", "Reflective details for running after dark.",
                "Made with 50 percent recycled materials.", "Good for flat feet and overpronation."]},
    {"dept": "Sports & Outdoors", "leaf": "Yoga", "n": 14, "since": 2005,
     "brands": ["Lotusline", "Zenfold", "Groundwork"],
     "nouns": {"Yoga Mat": "a yoga mat", "Yoga Block Set": "a set of two yoga blocks",
               "Yoga Strap": "a yoga strap", "Meditation Cushion": "a meditation cushion"},
     "features": [("Non-Slip", "with a non-slip grip even in hot yoga", ["Yoga Mat", "Yoga Block Set"]),
                  ("Extra-Thick", "that is extra thick, kind to knees", ["Yoga Mat", "Meditation Cushion"]),
                  ("Travel", "that folds small for travel", ["Yoga Mat", "Yoga Strap"]),
                  ("Cork", "made of natural cork", ["Yoga Mat", "Yoga Block Set"]),
                  ("Kids", "for kids, printed with animals", ["Yoga Mat"]),
                  ("Organic", "filled with organic buckwheat hulls", ["Meditation Cushion"])],
     "extras": ["Free of PVC and latex.", "Comes with a carrying strap.", "Easy to wipe clean.",
                "Suitable for beginners and experienced yogis."]},
    {"dept": "Sports & Outdoors", "leaf": "Cycling", "n": 15, "since": 2005,
     "brands": ["Velowerk", "Spokesmith", "Cadenza"],
     "nouns": {"Bike Helmet": "a bike helmet", "Bike Light Set": "a front and rear bike light set",
               "Cycling Gloves": "padded cycling gloves", "Bike Lock": "a bike lock",
               "Balance Bike": "a balance bike"},
     "features": [("Kids", "for kids aged 3 to 7", ["Bike Helmet", "Cycling Gloves", "Balance Bike"]),
                  ("Rechargeable", "that recharges over USB", ["Bike Light Set"]),
                  ("Heavy-Duty", "that is heavy-duty hardened steel", ["Bike Lock"]),
                  ("Commuter", "for commuters, with reflective trim", ["Bike Helmet", "Cycling Gloves", "Bike Light Set"]),
                  ("MIPS", "with a MIPS liner for extra protection", ["Bike Helmet"]),
                  ("Lightweight", "that is light and easy to carry", ["Balance Bike", "Bike Lock"])],
     "extras": ["Adjustable fit.", "Tested to European safety standards.", "Reflective details for riding after dark.",
                "Two-year warranty."]},
    {"dept": "Sports & Outdoors", "leaf": "Fishing", "n": 14, "since": 2005,
     "brands": ["Riverbend", "Tidewater", "Lureline"],
     "nouns": {"Spinning Rod": "a spinning rod and reel combo", "Fly Fishing Kit": "a fly fishing kit",
               "Tackle Box": "a tackle box", "Fishing Waders": "a pair of chest waders"},
     "features": [("Beginner", "for beginners, with everything needed to start", None),
                  ("Telescopic", "that telescopes down to fit in a car boot", ["Spinning Rod"]),
                  ("Saltwater", "built for saltwater, with corrosion-resistant parts", ["Spinning Rod", "Tackle Box"]),
                  ("Kids", "sized for kids", ["Spinning Rod", "Tackle Box"]),
                  ("Waterproof", "that is waterproof and breathable", ["Fishing Waders", "Tackle Box"]),
                  ("Carbon", "in light carbon fibre", ["Spinning Rod", "Fly Fishing Kit"])],
     "extras": ["Comes with a carry case.", "Good for lakes and rivers.", "Includes line and hooks.",
                "Gift-boxed."]},
    # ---- Toys & Games
    {"dept": "Toys & Games", "leaf": "Puzzles", "n": 17, "since": 2005,
     "brands": ["Puzzlewood", "Tessera", "Brainbox"],
     "nouns": {"Jigsaw Puzzle": "a jigsaw puzzle", "3D Puzzle": "a 3D puzzle", "Floor Puzzle": "a giant floor puzzle",
               "Wooden Puzzle": "a wooden puzzle"},
     "features": [("1000-Piece", "with 1000 pieces", ["Jigsaw Puzzle"]),
                  ("500-Piece", "with 500 large-format pieces", ["Jigsaw Puzzle"]),
                  ("2000-Piece", "with 2000 pieces for a real challenge", ["Jigsaw Puzzle"]),
                  ("Kids", "for kids, with 48 chunky pieces", ["Floor Puzzle", "Wooden Puzzle", "Jigsaw Puzzle"]),
                  ("Glow-in-the-Dark", "that glows in the dark", ["Jigsaw Puzzle", "Floor Puzzle"]),
                  ("Architecture", "of a famous building, for adults", ["3D Puzzle"])],
     "landmarks": {"3D Puzzle": ["Eiffel Tower", "Big Ben", "Taj Mahal", "Empire State Building"]},
     "suffixes": ["Lighthouse at Sunset", "Alpine Lake", "Solar System", "Dinosaur Valley",
                  "Venice Canals", "Ocean Life", "Starry Night", "World Map", "Eiffel Tower", "Autumn Forest"],
     "extras": ["Pieces fit snugly with no false fits.", "Poster of the picture included.",
                "Made from recycled board.", "A calm activity for rainy days."]},
    {"dept": "Toys & Games", "leaf": "Building Sets", "n": 16, "since": 2005,
     "brands": ["Brixo", "Blockcraft", "Tinkerton"],
     "nouns": {"Space Station Building Set": "a space station building set", "Castle Building Set": "a medieval castle building set",
               "Fire Station Building Set": "a city fire station building set", "Dinosaur Park Building Set": "a dinosaur park building set",
               "Pirate Ship Building Set": "a pirate ship building set", "Race Car Building Set": "a race car building set"},
     "features": [("Kids", "for kids aged 6 and up, with 350 pieces", None),
                  ("Toddler", "for toddlers, with big bricks that are easy to grip", None),
                  ("Motorized", "with a motor and remote so it moves", ["Race Car Building Set", "Space Station Building Set"]),
                  ("Collector's", "for adult collectors, with over 2000 pieces", None),
                  ("STEM", "that teaches simple engineering and coding", None)],
     "extras": ["Compatible with all major brick brands.", "Step-by-step picture instructions.",
                "Includes four minifigures.", "A great birthday gift."]},
    {"dept": "Toys & Games", "leaf": "Dolls & Plush", "n": 15, "since": 2005,
     "brands": ["Cuddleby", "Poppet", "Little Acorn"],
     "nouns": {"Teddy Bear": "a teddy bear", "Baby Doll": "a baby doll", "Dollhouse": "a three-storey dollhouse",
               "Unicorn Plush": "a unicorn plush", "Fashion Doll": "a fashion doll with outfits"},
     "features": [("Soft", "that is extra soft and cuddly", ["Teddy Bear", "Unicorn Plush", "Baby Doll"]),
                  ("Wooden", "made of wood with furniture", ["Dollhouse"]),
                  ("Talking", "that talks and sings songs", ["Baby Doll", "Teddy Bear", "Fashion Doll"]),
                  ("Giant", "that is almost a metre tall", ["Teddy Bear", "Unicorn Plush"]),
                  ("Organic", "made of organic cotton, safe from birth", ["Teddy Bear", "Baby Doll"]),
                  ("Glow", "with a night light that glows", ["Unicorn Plush", "Teddy Bear"])],
     "extras": ["Machine washable.", "Safety tested for ages 3 and up.", "Comes in a gift box.",
                "Includes accessories."]},
    {"dept": "Toys & Games", "leaf": "Remote Control Toys", "n": 15, "since": 2005,
     "brands": ["Zoomtek", "Turbo Kids", "Voltrix"],
     "nouns": {"RC Monster Truck": "a remote control monster truck", "RC Drift Car": "a remote control drift car",
               "Mini Drone": "a mini drone", "RC Boat": "a remote control boat", "RC Robot": "a remote control robot"},
     "features": [("All-Terrain", "that handles grass, gravel and sand", ["RC Monster Truck"]),
                  ("High-Speed", "that reaches 40 km/h", ["RC Drift Car", "RC Monster Truck", "RC Boat"]),
                  ("Kids", "for kids, with simple controls and sturdy bumpers", None),
                  ("Camera", "with an HD camera that streams to your phone", ["Mini Drone", "RC Monster Truck"]),
                  ("Waterproof", "that is waterproof and amphibious", ["RC Monster Truck", "RC Boat"]),
                  ("Programmable", "that kids can program with a simple app", ["RC Robot"])],
     "extras": ["Two rechargeable batteries included.", "2.4 GHz remote for racing with friends.",
                "Spare parts in the box.", "Runs 20 minutes per charge."]},
    # ---- Beauty
    {"dept": "Beauty", "leaf": "Skincare", "n": 18, "since": 2005,
     "brands": ["Dewpoint", "Verdana", "Lumiskin", "Pure Fern"],
     "nouns": {"Moisturizer": "a daily moisturizer", "Face Serum": "a face serum", "Sunscreen": "a sunscreen",
               "Cleanser": "a gentle foaming cleanser", "Night Cream": "a night cream", "Eye Cream": "an eye cream"},
     "features": [("Vegan", "that is vegan and cruelty-free", None),
                  ("Fragrance-Free", "that is fragrance-free for sensitive skin", None),
                  ("SPF 50", "with broad-spectrum SPF 50", ["Sunscreen", "Moisturizer"]),
                  ("Vitamin C", "with vitamin C to brighten dull skin", ["Face Serum", "Moisturizer", "Eye Cream"]),
                  ("Retinol", "with retinol for fine lines", ["Night Cream", "Face Serum", "Eye Cream"]),
                  ("Travel Size", "in a travel size under 100 ml", None),
                  ("Oil-Free", "that is oil-free for acne-prone skin", ["Moisturizer", "Cleanser", "Sunscreen"])],
     "extras": ["Dermatologist tested.", "Suits all skin types.", "Absorbs quickly without a greasy feel.",
                "Made in small batches."]},
    {"dept": "Beauty", "leaf": "Hair Care", "n": 15, "since": 2005,
     "brands": ["Silkroot", "Verdana", "Maneworks"],
     "nouns": {"Shampoo": "a shampoo", "Conditioner": "a conditioner", "Repair Mask": "a deep conditioning hair mask",
               "Hair Dryer": "a hair dryer", "Curling Iron": "a curling iron"},
     "features": [("Sulfate-Free", "that is sulfate-free and colour-safe", ["Shampoo", "Conditioner"]),
                  ("Vegan", "that is vegan", ["Shampoo", "Conditioner", "Repair Mask"]),
                  ("Curly Hair", "for curly hair, with shea butter", ["Shampoo", "Conditioner", "Repair Mask"]),
                  ("Ionic", "with ionic technology to cut frizz", ["Hair Dryer"]),
                  ("Travel", "that is travel size and easy to pack", ["Hair Dryer", "Curling Iron", "Shampoo"]),
                  ("Ceramic", "with a ceramic barrel", ["Curling Iron"]),
                  ("Kids", "for kids, tear-free", ["Shampoo", "Conditioner"])],
     "extras": ["Salon results at home.", "Made without parabens or silicones.", "Loved by stylists.",
                "Gentle enough for every day."]},
    {"dept": "Beauty", "leaf": "Makeup", "n": 15, "since": 2005,
     "brands": ["Rosette", "Lumiskin", "Kohl & Co."],
     "nouns": {"Mascara": "a mascara", "Foundation": "a liquid foundation", "Lipstick": "a lipstick",
               "Eyeshadow Palette": "a 12-shade eyeshadow palette", "Concealer": "a concealer"},
     "features": [("Waterproof", "that is waterproof and smudge-proof all day", ["Mascara", "Concealer", "Foundation"]),
                  ("Vegan", "that is vegan and cruelty-free", None),
                  ("Long-Wear", "that lasts 16 hours", ["Lipstick", "Foundation", "Concealer"]),
                  ("Matte", "with a matte finish", ["Lipstick", "Foundation", "Eyeshadow Palette"]),
                  ("Nude", "in warm nude shades", ["Eyeshadow Palette", "Lipstick"]),
                  ("Travel Size", "in a travel size", None)],
     "extras": ["Buildable coverage.", "Comes in 20 shades.", "Ophthalmologist tested.", "Paraben-free."]},
    {"dept": "Beauty", "leaf": "Fragrance", "n": 14, "since": 2005,
     "brands": ["Maison Lune", "Aurelle", "Cedar & Salt"],
     "nouns": {"Eau de Parfum": "an eau de parfum", "Eau de Toilette": "an eau de toilette",
               "Body Mist": "a light body mist", "Scented Candle": "a scented candle"},
     "features": [("Floral", "with notes of jasmine, rose and peony", None),
                  ("Woody", "with notes of cedar, vetiver and smoke", None),
                  ("Citrus", "with bright notes of bergamot and lemon", None),
                  ("Vanilla", "with warm vanilla and amber", None),
                  ("Travel Size", "in a 10 ml travel spray", ["Eau de Parfum", "Eau de Toilette"]),
                  ("Unisex", "that is unisex", ["Eau de Parfum", "Eau de Toilette"])],
     "extras": ["Lasts all day.", "A thoughtful gift.", "Made in France.", "Comes in a gift box."]},
]

# ---- Named works: books and board games ------------------------------------------------------------

NAMED = [
    {"dept": "Books", "leaf": "Mystery", "n": 18,
     "brands": ["Northlight Books", "Harbor House Press", "Quillstone"],
     "patterns": ["The {A} {N}", "Murder at {P}", "The {P} Affair", "A {N} in {P}", "Death by {M}"],
     "A": ["Silent", "Hidden", "Crimson", "Drowned", "Seventh", "Broken", "Midnight", "Frozen"],
     "N": ["Harbour", "Key", "Orchard", "Witness", "Garden", "Clock", "Letter", "Bell"],
     "P": ["Hollow Creek", "Ashford Hall", "Wren Cottage", "Kingsbridge", "Blackwater", "Saltmarsh"],
     "M": ["Chocolate", "Moonlight", "Misadventure", "Tea", "Teatime"],
     "themes": [("cozy", "A cozy mystery in which {who} finds a body in {where}"),
                ("noir", "A hard-boiled noir mystery in which {who} is hired to look into {where}"),
                ("police procedural", "A police procedural in which {who} investigates a killing in {where}"),
                ("locked-room", "A locked-room mystery in which {who} must explain a death inside {where}"),
                ("historical", "A historical mystery set in Victorian London, in which {who} follows a trail to {where}")],
     "who": ["a retired schoolteacher", "a young detective sergeant", "a bookshop owner", "a former spy",
             "a village vicar", "a private investigator"],
     "where": ["a seaside village", "a snowed-in country house", "a small-town bakery", "a rain-soaked city",
               "a university library", "an island hotel"],
     "extras": ["Twists right up to the last page.", "The first book in a new series.",
                "Perfect for a long train journey.", "Clever, funny and a little bit dark."]},
    {"dept": "Books", "leaf": "Science Fiction", "n": 18,
     "brands": ["Quillstone", "Red Kite Publishing", "Orbital Press"],
     "patterns": ["The {N} Protocol", "Beyond the {N}", "{W} Rising", "The Last {N}", "Children of {W}"],
     "N": ["Horizon", "Signal", "Archive", "Machine", "Gate", "Colony", "Drift", "Engine"],
     "W": ["Mars", "Europa", "Kepler", "Titan", "Andromeda", "Proxima"],
     "themes": [("time travel", "A time-travel novel in which {who} keeps going back to {when}"),
                ("space opera", "A sweeping space opera in which {who} leads a rebellion across {where}"),
                ("first contact", "A first-contact story in which {who} receives a message from {where}"),
                ("dystopian", "A dystopian thriller in which {who} escapes {where}"),
                ("artificial intelligence", "A novel about artificial intelligence in which {who} builds a robot that wakes up in {where}"),
                ("cyberpunk", "A cyberpunk caper in which {who} hacks into {where}")],
     "who": ["a stranded engineer", "a teenage pilot", "a linguist", "a starship captain", "an android detective",
             "a disgraced scientist"],
     "when": ["the year 1969", "ancient Rome", "the day she was born", "the last ice age"],
     "where": ["a flooded future city", "the rings of Saturn", "a dying star system",
               "a walled megacity", "a generation ship"],
     "extras": ["Big ideas and a fast plot.", "Winner of a major science fiction award.",
                "The first in a trilogy.", "Hard science, human heart."]},
    {"dept": "Books", "leaf": "Romance", "n": 16,
     "brands": ["Bramble & Finch", "Harbor House Press", "Rosewater Books"],
     "patterns": ["A Summer in {P}", "Love in {P}", "The {A} Promise", "Christmas at {P}", "The Wedding {N}"],
     "A": ["Second", "Perfect", "Secret", "Sweetest", "Unlikely"],
     "N": ["Planner", "Crasher", "Season", "Dress", "Date"],
     "P": ["Lavender Bay", "Maple Falls", "Cornwall", "Sorrento", "Willow Creek", "Nantucket"],
     "themes": [("second-chance", "A second-chance romance in which {who} runs into an old flame at {where} in {P}"),
                ("enemies-to-lovers", "An enemies-to-lovers romance in which {who} must share {where} with a rival"),
                ("small-town", "A small-town romance in which {who} inherits {where} in {P}"),
                ("holiday", "A feel-good holiday romance in which {who} gets snowed in at {where} in {P}"),
                ("royal", "A royal romance in which {who} falls for a prince who is hiding out in {where}")],
     "who": ["a busy lawyer", "a pastry chef", "a single dad", "a wedding planner", "a travel writer", "a vet"],
     "where": ["a seaside inn", "a vineyard", "a mountain lodge", "a flower shop",
               "a bookshop", "a farmhouse"],
     "extras": ["Warm, funny and swoony.", "A guaranteed happy ending.", "Perfect beach read.",
                "Steamy, for adult readers."]},
    {"dept": "Books", "leaf": "Cookbooks", "n": 17,
     "brands": ["Harbor House Press", "Saffron Table", "Greenleaf Kitchen"],
     "patterns": ["Simply {C}", "The {C} Kitchen", "{C} at Home", "Everyday {C}", "The {C} Table"],
     "C": ["Italian", "Vegan", "Baking", "Japanese", "Mexican", "Mediterranean", "Slow Cooker", "Grilling",
           "Bread", "Thai", "Gluten-Free", "Soup"],
     "proper": ["Italian", "Japanese", "Mexican", "Mediterranean", "Thai"],
     "themes": [("weeknight", "{k} easy weeknight {c} recipes, {style}"),
                ("family", "{k} family-friendly {c} recipes that kids will actually eat, {style}"),
                ("beginner", "{k} {c} recipes for beginners, {style}"),
                ("quick", "{k} {c} recipes ready in 30 minutes or less, {style}"),
                ("celebration", "{k} {c} recipes for dinner parties and holidays, {style}")],
     "k": ["75", "100", "120", "150"],
     "style": ["with step-by-step photos", "from a much-loved restaurant chef", "on a budget",
               "with a chapter on meal prep"],
     "extras": ["Every recipe has a photo.", "Includes a shopping guide.", "Lay-flat binding.",
                "Nutrition info for each dish."]},
    {"dept": "Books", "leaf": "Biographies", "n": 15,
     "brands": ["Northlight Books", "Orbital Press", "Quillstone"],
     "patterns": ["{F} {L}: {S}"],
     "F": ["Ada", "Marcus", "Elena", "Walter", "Grace", "Tomas", "Nina", "Henry"],
     "L": ["Marlowe", "Okafor", "Lindqvist", "Castellano", "Reyes", "Whitlock", "Novak"],
     "S": ["A Life", "The Long Road Home", "Against the Odds", "My Story", "The Early Years",
           "Unbroken"],
     "themes": [("aviator", "The life of the pioneering aviator who flew solo across {sea}"),
                ("musician", "The life of the jazz musician who rose from {where} to sold-out stadiums"),
                ("scientist", "The biography of the scientist whose work on vaccines began in {where}"),
                ("athlete", "The memoir of the Olympic runner who grew up in {where}"),
                ("chef", "The memoir of the chef who opened a tiny restaurant in {where}"),
                ("astronaut", "The biography of the astronaut who trained in {where}")],
     "sea": ["the Atlantic", "the Pacific", "the Sahara", "the Arctic"],
     "where": ["a small mining town", "post-war Berlin", "rural Kenya", "Brooklyn", "a fishing village in Norway",
               "Buenos Aires"],
     "extras": ["Based on letters and diaries never published before.", "With 32 pages of photos.",
                "An inspiring true story.", "Told with humour and honesty."]},
    {"dept": "Books", "leaf": "Children's Books", "n": 16,
     "brands": ["Red Kite Publishing", "Little Acorn Books", "Bramble & Finch"],
     "patterns": ["The {X} Who {V}", "Goodnight, {X}", "{X} Goes to {P}", "Where Is {X}?"],
     "X": ["Little Fox", "Hedgehog", "Tiny Dragon", "Bear", "Penguin", "Owl", "Mouse", "Dinosaur"],
     "V": ["Couldn't Sleep", "Lost His Hat", "Wanted to Fly", "Was Afraid of the Dark", "Loved Books"],
     "P": ["School", "the Seaside", "the Moon", "the Doctor", "the Farm"],
     "themes": [("bedtime", "A gentle bedtime story about {X}, for ages {age}"),
                ("dinosaurs", "A picture book in which {X} meets a family of dinosaurs, for ages {age}"),
                ("counting", "A counting book that follows {X} through the day, for ages {age}"),
                ("friendship", "A story about friendship and sharing, starring {X}, for ages {age}"),
                ("first day of school", "A story for the first day of school, about {X}, for ages {age}")],
     "age": ["2 to 4", "3 to 5", "4 to 7", "5 to 8"],
     "extras": ["Bright, bold illustrations.", "Great for reading aloud.", "Sturdy board-book pages.",
                "Rhyming text little ones love to repeat."]},
    {"dept": "Toys & Games", "leaf": "Board Games", "n": 18,
     "brands": ["Meeple Works", "Gamewright Hall", "Red Dice"],
     "patterns": ["{A} {N}", "{N} of {P}", "The {A} {N}"],
     "A": ["Harbor", "Dragon's", "Golden", "Starship", "Jungle", "Pirate", "Sky", "Lantern"],
     "N": ["Lords", "Hoard", "Express", "Tycoon", "Quest", "Kingdoms", "Heist", "Garden"],
     "P": ["Avalon", "the Nile", "Venice", "the Stars", "Atlantis"],
     "themes": [("cooperative", "A cooperative board game for {players} in which everyone works together to {goal}"),
                ("strategy", "A strategy board game for {players} about who can best {goal}"),
                ("family", "A family board game for {players}, ages 6 and up, racing to {goal}"),
                ("party", "A fast party game for {players} where teams shout and bluff to {goal}"),
                ("two-player", "A tense two-player duel in which each side tries to {goal}")],
     "players": ["2-4 players", "3-6 players", "2-5 players", "4-10 players", "1-4 players"],
     "goal": ["escape a sinking island", "build the richest trading port", "collect dragon treasure",
              "reach the stars first", "outwit the other thieves", "grow the finest garden"],
     "extras": ["Plays in about 45 minutes.", "Easy to learn in ten minutes.",
                "Beautifully illustrated components.", "Great for game night."]},
]


def _made_items(rng: random.Random, spec: dict) -> list[dict]:
    nouns = list(spec["nouns"])
    combos = []
    for word, phrase, fits in spec["features"]:
        for noun in nouns:
            if fits is None or noun in fits:
                for brand in spec["brands"]:
                    combos.append((brand, word, phrase, noun))
    rng.shuffle(combos)
    # Every (noun, feature) pair once before any pair comes back with another brand.
    first, rest, seen_pairs = [], [], set()
    for combo in combos:
        pair = (combo[3], combo[1])
        (rest if pair in seen_pairs else first).append(combo)
        seen_pairs.add(pair)
    chosen = first + rest
    items = []
    suffixes = list(spec.get("suffixes", []))
    for brand, word, phrase, noun in chosen[:spec["n"]]:
        title = f"{brand} {word} {noun}"
        noun_phrase = spec["nouns"][noun]
        description = f"{noun_phrase[0].upper()}{noun_phrase[1:]} {phrase}."
        if suffixes:
            scene = rng.choice(spec.get("landmarks", {}).get(noun, suffixes))
            title += f" - {scene}"
            description += f" The picture: {scene}."
        description += " " + rng.choice(spec["extras"])
        items.append({"title": title, "categories": [spec["dept"], spec["leaf"]], "brand": brand,
                      "year": rng.randint(max(spec.get("since", YEARS[0]), YEARS[0]), YEARS[1]),
                      "description": description})
    return items


def _fill(rng: random.Random, template: str, spec: dict, memo: dict[str, str]) -> str:
    """Fill {KEY} slots from spec[KEY]; a key keeps its value across one item's title and
    description (``memo``), and a lower-case key not in spec is the lower-case form of its upper-case
    key's value (proper nouns listed in spec["proper"] keep their capitals)."""
    out = template
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        key = out[start + 1:end]
        if key not in spec and key.upper() in spec:
            value = _fill(rng, "{" + key.upper() + "}", spec, memo)
            value = value if value in spec.get("proper", []) else value.lower()
        elif key not in memo:
            value = memo[key] = rng.choice(spec[key])
        else:
            value = memo[key]
        out = out[:start] + value + out[end + 1:]
    return out


def _named_items(rng: random.Random, spec: dict, taken: set[str]) -> list[dict]:
    items = []
    themes = list(spec["themes"])
    attempts = 0
    while len(items) < spec["n"] and attempts < 10000:
        attempts += 1
        memo: dict[str, str] = {}
        title = _fill(rng, rng.choice(spec["patterns"]), spec, memo)
        if title in taken:
            continue
        taken.add(title)
        # Themes in turn, so every theme gets about the same number of items.
        _, sentence = themes[len(items) % len(themes)]
        description = _fill(rng, sentence, spec, memo) + ". " + rng.choice(spec["extras"])
        items.append({"title": title, "categories": [spec["dept"], spec["leaf"]],
                      "brand": rng.choice(spec["brands"]), "year": rng.randint(*YEARS),
                      "description": description})
    return items


def make_items(seed: int = 0) -> list[dict]:
    """The catalog as dicts with item_id, title, categories, brand, year, description."""
    rng = random.Random(seed)
    taken = {entry["title"] for entry in SHARED_TITLES}
    items: list[dict] = [dict(entry) for entry in SHARED_TITLES]
    for spec in MADE:
        for item in _made_items(rng, spec):
            if item["title"] not in taken:
                taken.add(item["title"])
                items.append(item)
    for spec in NAMED:
        items.extend(_named_items(rng, spec, taken))
    rng.shuffle(items)
    out = []
    for index, item in enumerate(items, start=1):
        out.append({"item_id": f"P{index:04d}", "title": item["title"], "categories": item["categories"],
                    "brand": item["brand"], "year": item["year"], "description": item["description"]})
    return out


def make_interactions(items: list[dict], seed: int = 0) -> list[tuple[str, str, int, int]]:
    """(user_id, item_id, timestamp, rating) rows: each user mostly inside 1-3 favourite departments,
    with a few popular items per leaf, timestamps strictly increasing per user."""
    rng = random.Random(f"interactions-{seed}")
    by_dept: dict[str, list[dict]] = {}
    for item in items:
        by_dept.setdefault(item["categories"][0], []).append(item)
    departments = sorted(by_dept)
    # A fixed popularity weight per item (a long tail within each department).
    weight = {item["item_id"]: 1.0 / (1 + rng.random() * 9) ** 1.5 for item in items}
    histories: list[tuple[str, list[str], list[dict]]] = []
    for user in range(1, N_USERS + 1):
        user_id = f"u{user:03d}"
        favourites = rng.sample(departments, rng.choice([1, 1, 2, 2, 2, 3]))
        n = rng.randint(*HISTORY)
        # Within a favourite department, lean toward one or two leaf categories.
        leaves = {dept: set(rng.sample(sorted({i["categories"][1] for i in by_dept[dept]}), 2))
                  for dept in favourites}
        picked: list[dict] = []
        ids: set[str] = set()
        while len(picked) < n:
            if rng.random() < 0.85:
                dept = rng.choice(favourites)
                pool = by_dept[dept]
                boost = [3.0 if i["categories"][1] in leaves[dept] else 1.0 for i in pool]
            else:
                pool = by_dept[rng.choice(departments)]
                boost = [1.0] * len(pool)
            item = rng.choices(pool, weights=[weight[i["item_id"]] * b for i, b in zip(pool, boost)])[0]
            if item["item_id"] not in ids:
                ids.add(item["item_id"])
                picked.append(item)
        histories.append((user_id, favourites, picked))
    # Every item gets at least MIN_PER_ITEM users (so none is dropped from the built catalog): a fan
    # of its department with room left takes it at a random point of their history.
    count = {item["item_id"]: 0 for item in items}
    for _, _, picked in histories:
        for item in picked:
            count[item["item_id"]] += 1
    for item in items:
        fans = [h for h in histories if item["categories"][0] in h[1] and len(h[2]) < HISTORY[1]
                and item not in h[2]]
        rng.shuffle(fans)
        for _, _, picked in fans[:max(0, MIN_PER_ITEM - count[item["item_id"]])]:
            picked.insert(rng.randint(0, len(picked)), item)
    rows = []
    for user_id, _, picked in histories:
        moment = rng.randint(TIME_START, TIME_END - 120 * 86400)
        for item in picked:
            moment += rng.randint(3600, 7 * 86400)
            rating = rng.choices([1, 2, 3, 4, 5], weights=[1, 2, 5, 10, 9])[0]
            rows.append((user_id, item["item_id"], moment, rating))
    return rows


def write_products(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write interactions.csv and items.jsonl into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = make_items(seed)
    rows = make_interactions(items, seed)
    items_path = folder / "items.jsonl"
    with items_path.open("w", encoding="utf-8", newline="\n") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    interactions_path = folder / "interactions.csv"
    with interactions_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["user_id", "item_id", "timestamp", "rating"])
        writer.writerows(rows)
    return interactions_path, items_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic product catalog (generic format).")
    parser.add_argument("out_dir", type=Path, help="folder for interactions.csv and items.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    interactions, items = write_products(args.out_dir, args.seed)
    print(f"wrote {items} and {interactions}")


if __name__ == "__main__":
    main()
