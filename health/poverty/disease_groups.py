"""Disease groups for the commission's figures: the chapters of ICD-10.

The dashboard counts cases "by disease group". The chapters are the grouping every
Chinese hospital statistics report uses (GB/T 14396, the national ICD-10 edition, keeps
WHO's chapters), so the figures compare with the commission's other reports. A case counts
in each chapter of the diagnoses its household's members have among the rule set's disease
lists (the special-treatment list and the chronic conditions); a case with none of those
counts under :data:`NO_LISTED_DISEASE`.
"""

from __future__ import annotations

#: chapter -> (first category, last category, Chinese title, English title)
CHAPTERS: dict[str, tuple[str, str, str, str]] = {
    "I": ("A00", "B99", "某些传染病和寄生虫病", "infectious and parasitic diseases"),
    "II": ("C00", "D48", "肿瘤", "neoplasms"),
    "III": ("D50", "D89", "血液及造血器官疾病和免疫疾患", "blood and immune disorders"),
    "IV": ("E00", "E90", "内分泌、营养和代谢疾病", "endocrine, nutritional and metabolic"),
    "V": ("F00", "F99", "精神和行为障碍", "mental and behavioural disorders"),
    "VI": ("G00", "G99", "神经系统疾病", "nervous system"),
    "VII": ("H00", "H59", "眼和附器疾病", "eye and adnexa"),
    "VIII": ("H60", "H95", "耳和乳突疾病", "ear and mastoid"),
    "IX": ("I00", "I99", "循环系统疾病", "circulatory system"),
    "X": ("J00", "J99", "呼吸系统疾病", "respiratory system"),
    "XI": ("K00", "K93", "消化系统疾病", "digestive system"),
    "XII": ("L00", "L99", "皮肤和皮下组织疾病", "skin and subcutaneous tissue"),
    "XIII": ("M00", "M99", "肌肉骨骼系统和结缔组织疾病", "musculoskeletal system"),
    "XIV": ("N00", "N99", "泌尿生殖系统疾病", "genitourinary system"),
    "XV": ("O00", "O99", "妊娠、分娩和产褥期", "pregnancy and childbirth"),
    "XVI": ("P00", "P96", "起源于围生期的某些情况", "perinatal conditions"),
    "XVII": ("Q00", "Q99", "先天性畸形、变形和染色体异常", "congenital malformations"),
    "XVIII": ("R00", "R99", "症状、体征和异常所见", "symptoms, signs and abnormal findings"),
    "XIX": ("S00", "T98", "损伤、中毒和外因的某些其他后果", "injury and poisoning"),
    "XX": ("V01", "Y98", "疾病和死亡的外因", "external causes"),
    "XXI": ("Z00", "Z99", "影响健康状态和与保健机构接触的因素", "factors influencing health"),
    "XXII": ("U00", "U99", "特殊目的编码", "codes for special purposes"),
}
NO_LISTED_DISEASE = "none"
NO_LISTED_TITLE = ("无在列病种", "no listed disease")


def chapter_of(code: str) -> str | None:
    """The ICD-10 chapter of a code (``C16.9`` -> ``II``), None if it is no ICD-10 code."""
    category = code.strip().upper()[:3]
    if len(category) != 3 or not category[0].isalpha() or not category[1:].isdigit():
        return None
    for chapter, (first, last, _chinese, _english) in CHAPTERS.items():
        if first <= category <= last:
            return chapter
    return None


def title(group: str) -> tuple[str, str]:
    """(Chinese, English) name of a disease group."""
    if group == NO_LISTED_DISEASE:
        return NO_LISTED_TITLE
    _first, _last, chinese, english = CHAPTERS[group]
    return chinese, english
