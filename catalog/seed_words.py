"""The words of the synthetic catalog: departments, their leaf categories, brands, product
nouns, price ranges and the phrases descriptions are built from.

Kept apart from the loader so the data reads as data. Prices are whole-dollar ranges per
category; the generator adds .99/.49/.00 endings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Leaf:
    name: str
    nouns: tuple[Noun, ...]
    brands: tuple[str, ...]
    specs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Noun:
    word: str
    price: tuple[int, int]  # whole dollars, low and high


def _leaf(name: str, nouns: str, brands: str, low: int, high: int, specs: str) -> Leaf:
    """``nouns`` is ``Word|Word:low-high|...``; a noun without its own range uses the
    leaf's (a bike helmet is not priced like a bicycle)."""
    parsed = []
    for item in nouns.split("|"):
        word, _, span = item.partition(":")
        lo, _, hi = span.partition("-")
        parsed.append(Noun(word, (int(lo), int(hi)) if span else (low, high)))
    return Leaf(name, tuple(parsed), tuple(brands.split("|")), tuple(specs.split("|")))


DEPARTMENTS: dict[str, tuple[Leaf, ...]] = {
    "Electronics": (
        _leaf("Laptops", "Laptop|Notebook|Ultrabook|Chromebook",
              "Dell|HP|Lenovo|Apple|Asus|Acer|MSI|Microsoft|Razer|Samsung", 249, 3499,
              "14-inch|15.6-inch|16GB RAM|32GB RAM|512GB SSD|1TB SSD|OLED|Backlit Keyboard"),
        _leaf("Smartphones", "Smartphone|Phone", "Apple|Samsung|Google|OnePlus|Motorola|Xiaomi|"
              "Nokia|Sony", 129, 1599, "128GB|256GB|5G|Dual SIM|Unlocked|120Hz|Triple Camera"),
        _leaf("Tablets", "Tablet|Pad", "Apple|Samsung|Lenovo|Amazon|Microsoft|Xiaomi", 79, 1299,
              "10-inch|11-inch|Wi-Fi|LTE|64GB|256GB|Stylus Support"),
        _leaf("Headphones", "Headphones|Earbuds|Headset", "Sony|Bose|Sennheiser|JBL|Apple|"
              "Beats|Jabra|Audio-Technica|Skullcandy|Anker", 19, 549,
              "Wireless|Noise Cancelling|Over-Ear|In-Ear|Bluetooth 5.3|40h Battery"),
        _leaf("Televisions", "TV|Smart TV|Television", "Samsung|LG|Sony|TCL|Hisense|Vizio|"
              "Panasonic|Philips", 199, 4999, "55-inch|65-inch|75-inch|4K UHD|OLED|QLED|HDR10"),
        _leaf("Cameras", "Camera|Mirrorless Camera|Action Camera", "Canon|Nikon|Sony|Fujifilm|"
              "Panasonic|GoPro|Olympus", 149, 3999, "24MP|4K Video|Image Stabilization|Kit Lens"),
        _leaf("Monitors", "Monitor|Gaming Monitor|Display", "Dell|LG|Samsung|Asus|Acer|BenQ|"
              "ViewSonic|MSI", 99, 1499, "27-inch|32-inch|144Hz|IPS|USB-C|1440p|Curved"),
        _leaf("Smartwatches", "Smartwatch|Fitness Tracker|Watch", "Apple|Garmin|Samsung|Fitbit|"
              "Amazfit|Huawei", 39, 899, "GPS|Heart Rate|AMOLED|Water Resistant|LTE"),
    ),
    "Home & Kitchen": (
        _leaf("Coffee Makers", "Coffee Maker|Espresso Machine|Coffee Grinder", "Breville|"
              "De'Longhi|Keurig|Nespresso|Cuisinart|Philips|Krups", 29, 1299,
              "12-Cup|Programmable|Milk Frother|Stainless Steel|Thermal Carafe"),
        _leaf("Blenders", "Blender|Food Processor|Juicer", "Vitamix|Ninja|Oster|KitchenAid|"
              "Hamilton Beach|Breville", 29, 699, "1200W|64oz|Variable Speed|BPA-Free"),
        _leaf("Cookware", "Frying Pan:19-199|Cookware Set:79-899|Dutch Oven:49-449|"
              "Saucepan:19-249|Wok:19-149",
              "Le Creuset|"
              "Lodge|T-fal|All-Clad|Calphalon|Tramontina|Cuisinart", 19, 899,
              "Nonstick|Cast Iron|Induction Ready|Oven Safe|10-Piece"),
        _leaf("Vacuum Cleaners", "Vacuum|Robot Vacuum|Stick Vacuum", "Dyson|Shark|iRobot|"
              "Bissell|Roborock|Eufy|Hoover", 79, 999, "Cordless|HEPA Filter|Self-Emptying|"
              "Pet Hair|60min Runtime"),
        _leaf("Air Fryers", "Air Fryer|Toaster Oven|Multicooker", "Ninja|Cosori|Instant Pot|"
              "Philips|Chefman|Breville", 39, 399, "6-Quart|Dual Basket|Digital Display"),
        _leaf("Bedding", "Sheet Set|Duvet Cover|Pillow|Comforter|Mattress Topper", "Brooklinen|"
              "Casper|Tempur-Pedic|Parachute|Utopia|Linenspa", 19, 499,
              "Queen|King|Cotton|Memory Foam|Hypoallergenic|400 Thread Count"),
    ),
    "Clothing": (
        _leaf("T-Shirts", "T-Shirt|Tee|Polo Shirt", "Nike|Adidas|Uniqlo|Hanes|Gap|Levi's|"
              "Champion|Under Armour", 9, 79, "Cotton|Slim Fit|Crew Neck|V-Neck|Organic"),
        _leaf("Jeans", "Jeans|Denim Jacket|Chinos", "Levi's|Wrangler|Lee|Diesel|Gap|"
              "Calvin Klein", 29, 199, "Straight Leg|Skinny|Stretch|Relaxed Fit|Raw Denim"),
        _leaf("Sneakers", "Sneakers|Running Shoes|Trainers", "Nike|Adidas|New Balance|Puma|"
              "Asics|Reebok|Converse|Vans|Hoka", 39, 249, "Lightweight|Breathable|Cushioned"),
        _leaf("Jackets", "Jacket|Parka|Rain Jacket|Fleece", "The North Face|Patagonia|Columbia|"
              "Arc'teryx|Carhartt|Uniqlo", 39, 699, "Waterproof|Insulated|Packable|Hooded"),
        _leaf("Dresses", "Dress|Maxi Dress|Sundress", "Zara|H&M|Mango|Reformation|"
              "Free People|Anthropologie", 19, 299, "Floral|Linen|Wrap|Midi|Sleeveless"),
    ),
    "Sports & Outdoors": (
        _leaf("Camping", "Tent:79-799|Sleeping Bag:39-399|Camping Stove:29-199|Backpack:49-349",
              "Coleman|REI|"
              "Big Agnes|MSR|Osprey|Kelty|Marmot", 29, 799, "2-Person|4-Person|Ultralight|"
              "3-Season|Waterproof"),
        _leaf("Fitness", "Dumbbells:29-499|Yoga Mat:15-129|Kettlebell:19-199|"
              "Resistance Bands:15-59|"
              "Exercise Bike:299-1999",
              "Bowflex|Peloton|Manduka|Gaiam|Rogue|NordicTrack", 15, 1999,
              "Adjustable|Non-Slip|Foldable|Heavy Duty|Set of 5"),
        _leaf("Cycling", "Bicycle:299-4999|Bike Helmet:29-299|Bike Light:19-129|"
              "Cycling Jersey:29-199",
              "Trek|Specialized|"
              "Giant|Cannondale|Shimano|Giro", 19, 4999, "Carbon|Aluminum|21-Speed|"
              "USB Rechargeable"),
        _leaf("Team Sports", "Soccer Ball:9-149|Basketball:9-99|Baseball Glove:19-349|"
              "Tennis Racket:29-299",
              "Wilson|"
              "Spalding|Rawlings|Babolat|Adidas|Nike", 9, 349, "Official Size|Indoor|Outdoor"),
    ),
    "Books": (
        _leaf("Fiction", "Novel|Thriller|Mystery|Fantasy Novel|Short Stories", "Penguin|"
              "HarperCollins|Vintage|Tor|Orbit|Scribner", 7, 39, "Hardcover|Paperback|"
              "Bestseller|First Edition|Illustrated"),
        _leaf("Cookbooks", "Cookbook|Baking Book|Recipe Collection", "Ten Speed Press|Clarkson "
              "Potter|Phaidon|Chronicle Books", 12, 59, "Hardcover|Vegetarian|Illustrated"),
        _leaf("Children's Books", "Picture Book|Board Book|Activity Book", "Scholastic|"
              "Candlewick|Usborne|Random House Kids", 4, 29, "Ages 3-5|Ages 6-8|Illustrated"),
        _leaf("Technology Books", "Programming Guide|Handbook|Textbook", "O'Reilly|No Starch|"
              "Manning|Addison-Wesley|Pragmatic Bookshelf", 19, 89, "2nd Edition|Paperback|"
              "Python|Rust|Databases|Distributed Systems"),
    ),
    "Toys & Games": (
        _leaf("Building Sets", "Building Set|Construction Kit|Brick Set", "LEGO|Mega Bloks|"
              "K'NEX|Magna-Tiles", 9, 799, "500 Pieces|1000 Pieces|Ages 8+|Collector"),
        _leaf("Board Games", "Board Game|Card Game|Puzzle", "Hasbro|Ravensburger|Asmodee|"
              "Mattel|Days of Wonder", 9, 129, "2-4 Players|Family|Strategy|1000 Pieces"),
        _leaf("Dolls & Figures", "Action Figure|Doll|Plush Toy", "Mattel|Hasbro|Funko|"
              "Jellycat|Barbie", 5, 149, "Poseable|Collectible|Soft|12-inch"),
    ),
    "Beauty": (
        _leaf("Skin Care", "Moisturizer|Serum|Sunscreen|Cleanser|Face Mask", "CeraVe|"
              "La Roche-Posay|The Ordinary|Neutrogena|Clinique|Olay", 5, 149,
              "SPF 50|Hyaluronic Acid|Retinol|Fragrance-Free|Vitamin C"),
        _leaf("Hair Care", "Shampoo:5-49|Conditioner:5-49|Hair Dryer:29-549|Straightener:29-299",
              "Dyson|Olaplex|"
              "Pantene|Moroccanoil|Revlon|GHD", 5, 549, "Sulfate-Free|Ionic|Repair|Volume"),
        _leaf("Fragrance", "Eau de Parfum|Eau de Toilette|Cologne", "Chanel|Dior|Armani|"
              "Versace|Calvin Klein|Jo Malone", 29, 349, "50ml|100ml|Floral|Woody|Citrus"),
    ),
    "Grocery": (
        _leaf("Coffee & Tea", "Coffee Beans|Ground Coffee|Green Tea|Black Tea|Coffee Pods",
              "Lavazza|Illy|Starbucks|Twinings|Peet's|Lipton", 4, 59,
              "Organic|Medium Roast|Dark Roast|Decaf|Fair Trade|2lb Bag"),
        _leaf("Snacks", "Granola Bars|Trail Mix|Chips|Cookies|Protein Bars", "KIND|Clif|"
              "Nature Valley|Pringles|Lay's|Quest", 2, 39, "Family Pack|Gluten-Free|24-Count"),
        _leaf("Pantry", "Olive Oil|Pasta|Rice|Honey|Spices", "Barilla|De Cecco|Bertolli|"
              "McCormick|Lundberg|Nature Nate's", 2, 49, "Organic|Extra Virgin|Whole Grain"),
    ),
    "Office": (
        _leaf("Office Chairs", "Office Chair:99-1899|Gaming Chair:149-599|Desk Chair:79-399",
              "Herman Miller|Steelcase|"
              "Secretlab|Autonomous|Branch|HON", 79, 1899, "Ergonomic|Lumbar Support|Mesh"),
        _leaf("Desks", "Standing Desk|Writing Desk|Desk Converter", "Uplift|Fully|Autonomous|"
              "IKEA|Flexispot|Vari", 99, 1499, "Electric|Height Adjustable|Bamboo Top"),
        _leaf("Printers", "Printer|Laser Printer|Scanner", "HP|Brother|Canon|Epson|Xerox",
              49, 899, "Wireless|Duplex|All-in-One|Color|Monochrome"),
        _leaf("Stationery", "Notebook:5-39|Fountain Pen:15-199|Planner:9-49|Sticky Notes:2-19",
              "Moleskine|Leuchtturm|"
              "Pilot|Lamy|Post-it|Parker", 2, 199, "Dotted|A5|Refillable|Pack of 12"),
    ),
    "Pet Supplies": (
        _leaf("Dog Supplies", "Dog Food:9-99|Dog Bed:29-199|Dog Leash:9-49|Dog Toy:4-29",
              "Purina|Blue Buffalo|"
              "KONG|Ruffwear|Hill's|Pedigree", 4, 199, "Grain-Free|Large Breed|Chew-Proof"),
        _leaf("Cat Supplies", "Cat Food:9-89|Cat Tree:49-249|Litter Box:19-199|Cat Toy:3-29",
              "Purina|Whiskas|"
              "Hill's|Catit|PetSafe|Meow Mix", 3, 249, "Indoor|Self-Cleaning|Salmon Recipe"),
    ),
    "Automotive": (
        _leaf("Car Electronics", "Dash Cam:49-399|Car Charger:9-49|GPS Navigator:99-499|"
              "Car Stereo:79-699",
              "Garmin|"
              "Pioneer|Anker|Nextbase|Kenwood|Vantrue", 9, 699, "1080p|4K|Wireless CarPlay"),
        _leaf("Car Care", "Car Wax:7-49|Pressure Washer:99-399|Tire Inflator:29-129|"
              "Car Vacuum:29-199",
              "Meguiar's|"
              "Chemical Guys|Armor All|Karcher|Ryobi", 7, 399, "Portable|Cordless|Ceramic"),
    ),
    "Garden": (
        _leaf("Garden Tools", "Lawn Mower:149-899|Hedge Trimmer:49-299|Garden Hose:19-99|"
              "Pruning Shears:9-79",
              "Greenworks|"
              "EGO|Fiskars|Black+Decker|Husqvarna|Gardena", 9, 899, "Cordless|40V|Expandable"),
        _leaf("Outdoor Furniture", "Patio Set:299-1999|Hammock:39-299|Outdoor Umbrella:49-399|"
              "Adirondack Chair:99-499",
              "Polywood|Keter|Sunnydaze|Best Choice", 39, 1999, "Weatherproof|Teak|Folding"),
    ),
}

SERIES = ("Pro", "Air", "Max", "Ultra", "Lite", "Plus", "Elite", "Prime", "Nova", "Edge",
          "Flex", "Zen", "Core", "Vista", "Apex", "Pulse", "Fusion", "Orbit", "Summit", "Echo",
          "Vertex", "Spark", "Terra", "Aura", "Quantum", "Titan", "Breeze", "Halo", "Nimbus",
          "Atlas", "Vector", "Zephyr")

COLORS = ("Black", "White", "Silver", "Gray", "Blue", "Navy", "Red", "Green", "Olive",
          "Beige", "Pink", "Purple", "Gold", "Graphite", "Midnight", "Teal")

# Editions are rare on purpose: a search for one of these words touches a few hundred
# products, the "rare term" case of the benchmark.
EDITIONS = ("Anniversary Edition", "Collector's Edition", "Limited Edition", "Signature Edition",
            "Heritage Edition", "Expedition Edition")

QUALITIES = ("durable", "lightweight", "compact", "premium", "versatile", "reliable",
             "sleek", "powerful", "quiet", "energy-efficient", "easy-to-clean", "portable",
             "award-winning", "best-selling", "eco-friendly", "handcrafted")

BENEFITS = (
    "Built for everyday use and backed by a two-year warranty.",
    "Designed to last, with materials tested far beyond normal wear.",
    "A customer favourite for its value and thoughtful details.",
    "Ships in recyclable packaging; setup takes minutes.",
    "Rated highly by reviewers for comfort and performance.",
    "Pairs well with the rest of the range for a consistent look.",
    "Free returns within 30 days if it is not the right fit.",
    "Engineered for reliability, with responsive customer support.",
)

USES = ("home", "the office", "travel", "students", "families", "professionals", "gifting",
        "beginners", "enthusiasts", "small spaces", "outdoor adventures", "everyday carry")
