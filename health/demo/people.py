"""Made-up people for the demo: Chinese names, resident identity numbers and mobile numbers.

Surnames follow Ningxia's mix: the Hui surnames (马, 杨, 丁, 海, 金, 冶, 纳, 摆, 虎, 白...)
beside the common Han ones, weighted so that 马 is the most frequent, as it is in the
resettlement villages. Resident IDs are made with the project's GB 11643 code, so they are
valid numbers that agree with the person's birth date and sex.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from records.validation.resident_id import make_resident_id

# (surname, relative weight)
# fmt: off
_SURNAMES: tuple[tuple[str, int], ...] = (
    ("马", 30), ("杨", 12), ("李", 12), ("王", 11), ("张", 9), ("丁", 6), ("海", 5), ("金", 4),
    ("田", 4), ("冶", 3), ("纳", 3), ("摆", 2), ("虎", 3), ("白", 4), ("刘", 6), ("周", 3),
    ("赵", 3), ("苏", 3), ("罗", 2), ("韩", 3), ("何", 2), ("穆", 2), ("锁", 1), ("哈", 1),
)
# fmt: on
_MALE_CHARACTERS = "国军建明志伟强平文斌学福成海龙德俊宏忠义刚华祥宝山林涛鹏飞勇东伏"
_FEMALE_CHARACTERS = "秀兰英梅花玲芳娟霞丽萍燕红琴凤桂莲娜婷静慧敏雪琳艳芬菊彩"


@dataclass(frozen=True, slots=True)
class PersonName:
    family: str
    given: str

    @property
    def text(self) -> str:
        return self.family + self.given

    def as_fhir(self) -> dict[str, Any]:
        """A HumanName: the full name as text, the surname as family, the given name whole."""
        return {"use": "official", "text": self.text, "family": self.family, "given": [self.given]}


def random_surname(rng: random.Random) -> str:
    surnames, weights = zip(*_SURNAMES, strict=True)
    return rng.choices(surnames, weights=weights)[0]


def random_given_name(rng: random.Random, gender: str) -> str:
    """One or two characters; two is the commoner form for people born after the 1960s."""
    characters = _MALE_CHARACTERS if gender == "male" else _FEMALE_CHARACTERS
    length = 1 if rng.random() < 0.3 else 2
    return "".join(rng.choice(characters) for _ in range(length))


def random_name(rng: random.Random, gender: str, family: str | None = None) -> PersonName:
    return PersonName(family or random_surname(rng), random_given_name(rng, gender))


def random_mobile(rng: random.Random) -> str:
    """An 11-digit mainland mobile number with a real carrier prefix."""
    prefix = rng.choice(
        ("133", "135", "138", "139", "150", "151", "152", "177", "180", "189", "199")
    )
    return prefix + "".join(str(rng.randrange(10)) for _ in range(8))


class ResidentIdMaker:
    """Makes resident IDs that are unique within one demo data set."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._issued: set[str] = set()

    def make(self, region_code: str, birth_date: dt.date, gender: str) -> str:
        # 1000 sequence numbers per region and day; a collision in a few hundred people is
        # rare, and a retry with another sequence number resolves it.
        while True:
            number = make_resident_id(region_code, birth_date, self._rng.randrange(1000), gender)
            if number not in self._issued:
                self._issued.add(number)
                return number
