import math


def circle_area(radius: float) -> float:
    """Area of a circle of the given radius."""
    

def circle_circumference(radius: float) -> float:
    """Length of the circle's boundary."""
    return 2 * math.pi * radius
